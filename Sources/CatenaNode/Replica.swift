import CatenaCore
import CatenaNetwork
import CatenaStorage
import CatenaWire
import Logging
import Synchronization

/// What the connection handlers read without an actor hop: the configuration and this node's
/// role in it. Updated by the ``Replica`` whenever the configuration changes.
final class ReplicaView: Sendable {
    struct Snapshot: Sendable {
        var configuration: ChainConfiguration?
        var role: ChainRole?
        var failure: CatenaError?
        /// Where the master says this node stands.
        var standing: NodeStanding?
        /// Until when this node may serve clients (its lease from the master).
        var leaseExpiry: ContinuousClock.Instant?
        /// Not a member: how the catch-up from the tail is going.
        var catchUp: CatchUpProgress?
        /// Appended to the chain and not yet holding everything committed before: no reads.
        var readsBlocked = false
        var epoch: UInt64 { configuration?.epoch ?? 0 }
    }

    private let state = Mutex(Snapshot())

    var snapshot: Snapshot { state.withLock { $0 } }

    func update(_ body: (inout Snapshot) -> Void) {
        state.withLock { body(&$0) }
    }

    /// Whether the lease is valid at `now`.
    func leaseValid(at now: ContinuousClock.Instant) -> Bool {
        state.withLock { $0.leaseExpiry.map { now < $0 } ?? false }
    }
}

/// How the replica builds its successor link.
struct LinkSettings: Sendable {
    var clusterID: String
    var maxBatchBytes: Int
    var limits: ConnectionLimits
    var catchUpCompression: Bool
    var catchUpBytesPerSecond: Int?
}

/// Counters and gauges of one node's replication, for tests, `catena chain status` and metrics.
public struct ReplicaMetrics: Hashable, Sendable {
    /// Writes committed at this node as head.
    public var writesCommitted = 0
    /// Writes refused (redirect, invalid, busy, failure).
    public var writesRefused = 0
    /// Records applied from the predecessor.
    public var recordsReplicated = 0
    /// Bytes of writes taken at the head and not yet committed.
    public var uncommittedBytes = 0
    /// The most `uncommittedBytes` ever reached.
    public var peakUncommittedBytes = 0
    /// Writes that waited for room under the uncommitted-bytes bound.
    public var writesThrottled = 0
    /// Bytes forwarded and not yet acknowledged by the successor (the Sent list).
    public var inFlightBytes = 0
    /// The highest LSN accepted into the local log.
    public var lastAccepted = LSN.zero
    /// The highest LSN acknowledged upstream (the head: committed).
    public var acknowledged = LSN.zero
}

/// The one interpreter of this node's ``ReplicaStateMachine``: it feeds the machine events
/// (client writes, replicated records, durability, acknowledgements, configurations) and performs
/// every action it returns — appending to the local store, forwarding over the successor link,
/// acknowledging upstream, answering clients. An actor: events are handled one at a time, and
/// each append is enqueued in the store before the next event, so the log's order is the
/// machine's order.
///
/// Fail-stop: if the local log cannot take or persist a record, the replica stops taking writes
/// and replication (a record the machine accepted but the log lost must never be acknowledged);
/// the node must be restarted, and the master (next milestone) replaces it in the chain.
actor Replica {
    let me: NodeID
    let store: Store
    let view = ReplicaView()
    private let logger: Logger
    private let maxUncommittedBytes: Int
    private let durableTickets: AsyncStream<(AppendTicket, LSN)>.Continuation
    private let links: LinkSettings
    /// Request ids of the log's last records, for the machine built by the first configuration.
    private var recentRequests: [ReplicaStateMachine.Commit]

    private var machine: ReplicaStateMachine?
    private var waiters: [RequestID: [CheckedContinuation<Result<LSN, CatenaError>, Never>]] = [:]
    /// Head: (seq, bytes) of uncommitted writes, in LSN order.
    private var uncommitted: [(seq: UInt64, bytes: Int)] = []
    private var uncommittedHead = 0
    private var admission: [CheckedContinuation<Void, Never>] = []
    private var failure: CatenaError?
    private var draining = false
    private var link: ReplicationLink?
    /// Whether the current successor has reported its position since the link was made. The head
    /// takes no writes before: a successor holding records this log lacks (a log that lost data)
    /// must be found before an LSN could be handed out twice.
    private var successorPositionKnown = false
    private var upstream: (node: NodeID, acks: AckSender)?
    /// The master's epoch history, as of the last heartbeat.
    private var history = EpochHistory([])
    /// Not a member: the catch-up from the tail, while it runs.
    private var joining: (source: ChainMember, task: Task<Void, Never>)?
    /// Appended: the LSN whose durability here unblocks reads (see ``readTarget(_:from:)``).
    private var readTarget: LSN?
    private(set) var metrics = ReplicaMetrics()

    init(me: NodeID, store: Store, maxUncommittedBytes: Int, logger: Logger,
         durableTickets: AsyncStream<(AppendTicket, LSN)>.Continuation, links: LinkSettings,
         recentRequests: [ReplicaStateMachine.Commit]) {
        self.recentRequests = recentRequests
        self.me = me
        self.store = store
        self.maxUncommittedBytes = maxUncommittedBytes
        self.logger = logger
        self.durableTickets = durableTickets
        self.links = links
    }

    var configuration: ChainConfiguration? { machine?.configuration }

    // MARK: - Events

    /// A configuration from the master, with this node's standing and the epoch history.
    ///
    /// The first builds the machine over the local log; later ones (newer epochs) reconfigure
    /// it. A node that is no longer a member gives up its role (a head its pending writes) and,
    /// if the master lists it as joining, rejoins: it truncates what the chain does not share
    /// and catches up from the tail. A node that becomes a member again waits for its catch-up
    /// to stop (everything it installed is durable), then builds a fresh machine over its log.
    func configure(_ configuration: ChainConfiguration, standing: NodeStanding, history: EpochHistory) async {
        if history.entries.count >= self.history.entries.count { self.history = history }
        let isMember = configuration.role(of: me) != nil
        if isMember, failure == nil, !draining, !self.history.holds(store.lastEnqueuedLSN) {
            // A member whose log holds writes the chain never committed, by the history: a head
            // paused past its lease whose first heartbeat after the pause reported only its
            // durable records (a prefix of the chain's), so the master appended it at once,
            // while records enqueued before the pause became durable after; or a member that
            // got the last writes of a head that died before its predecessor did, once the
            // next head's epoch start is recorded below them. It must not serve them nor keep
            // them from its predecessor: truncate, then build a fresh machine below.
            await leaveRoleAndTruncate()
            guard failure == nil else { return }
        }
        if machine == nil || (isMember && machine!.role == nil && configuration.epoch > machine!.configuration.epoch) {
            await stopJoining()
            guard machine == nil || configuration.epoch > machine!.configuration.epoch else { return }
            // The node bounds memory itself (uncommitted bytes at the head, which covers the
            // whole chain's in-flight bytes), so the machine's own bound never refuses.
            var limits = ReplicaStateMachine.Limits()
            limits.maxInFlightBytes = Int.max >> 1
            if machine != nil {
                recentRequests = await Replica.recentRequests(in: store, limit: limits.rememberedRequests, logger: logger)
            }
            // A node appended to the chain may lack writes committed just before (its catch-up
            // stopped short of the tail's end), and a restarted one may have lost what it had not
            // made durable: a node with a predecessor answers no reads until its log reaches what
            // the predecessor held when their link started (``readTarget(_:from:)``).
            let appended = isMember && configuration.predecessor(of: me) != nil
            view.update {
                $0.readsBlocked = appended
                $0.catchUp = nil
            }
            readTarget = nil
            machine = ReplicaStateMachine(me: me, configuration: configuration, lastLSN: store.lastEnqueuedLSN,
                                          recentRequests: recentRequests, limits: limits)
            recentRequests = []
            logger.info("configured", metadata: [
                LogKey.epoch: "\(configuration.epoch)", LogKey.role: "\(configuration.role(of: me).map { "\($0)" } ?? "none")",
                LogKey.lsn: "\(store.lastEnqueuedLSN)",
            ])
            updateLinks()
        } else if configuration.epoch > machine!.configuration.epoch {
            let old = machine!.configuration
            perform(machine!.reconfigure(configuration))
            logger.info("reconfigured", metadata: [
                LogKey.epoch: "\(configuration.epoch)", LogKey.role: "\(configuration.role(of: me).map { "\($0)" } ?? "none")",
            ])
            if let previous = upstream, configuration.predecessor(of: me)?.id != previous.node || old.predecessor(of: me) != configuration.predecessor(of: me) {
                previous.acks.close()
                upstream = nil
            }
            updateLinks()
        }
        view.update { $0.standing = standing }
        if !isMember && standing == .joining, failure == nil, !draining, let tail = configuration.tail {
            if joining?.source != tail {
                joining?.task.cancel()
                let previous = joining?.task
                joining = (tail, Task { [self] in
                    await previous?.value
                    await rejoin(from: tail)
                })
            }
        } else if let join = joining, isMember || standing != .joining {
            join.task.cancel()
            joining = nil
        }
    }

    /// The epoch start the head of the current epoch must report before its first write there
    /// (nil: none to report).
    var epochStartToReport: EpochStart? {
        guard let machine, machine.role?.takesWrites == true, history.firstSeq(of: machine.configuration.epoch) == nil else { return nil }
        return EpochStart(epoch: machine.configuration.epoch, firstSeq: machine.lastAccepted.seq + 1)
    }

    /// A client write at the head: waits for room under the uncommitted-bytes bound, then
    /// returns once the write committed (or was refused).
    func write(_ request: WriteRequest) async -> Result<LSN, CatenaError> {
        // Every write names its request: waiters, retries and exactly-once hang on the id.
        guard request.requestID != .none else {
            return refused(CatenaError(.invalidArgument, "a write needs a request id (0 is reserved)"))
        }
        let size = RecordHeader.overhead + request.key.bytes.count + request.value.count
        var waited = false
        while failure == nil, !draining, uncommittedBytes > 0, uncommittedBytes + size > maxUncommittedBytes,
              machine?.role?.takesWrites == true {
            if !waited { metrics.writesThrottled += 1 }
            waited = true
            await withCheckedContinuation { admission.append($0) }
        }
        if let failure { return refused(failure) }
        if draining { return refused(CatenaError(.unavailable, "\(me) is shutting down")) }
        guard machine != nil else { return refused(CatenaError(.unavailable, "\(me) has no chain configuration yet")) }
        if machine!.role?.takesWrites == true {
            if let next = machine!.configuration.successor(of: me), !successorPositionKnown {
                return refused(CatenaError(.unavailable, "\(me) waits for its successor \(next.id) to report its position"))
            }
            let epoch = machine!.configuration.epoch
            if history.firstSeq(of: epoch) == nil {
                return refused(CatenaError(.unavailable, "\(me) waits for the master to record where epoch \(epoch) starts"))
            }
            guard view.leaseValid(at: .now) else {
                return refused(CatenaError(.unavailable, "\(me)'s lease from the master ran out; it takes no writes until renewed"))
            }
        }
        let store = self.store
        // In place (`machine!`): a copy would duplicate the machine's request table per write.
        let actions = machine!.write(request, now: wallClockNanoseconds()) { (r) throws(CatenaError) in try store.check(r) }
        if case .refuse(_, let error)? = actions.first, actions.count == 1 {
            return refused(error)
        }
        if case .committed(let commits)? = actions.first, actions.count == 1 {
            // A retry of a write that already committed: its original result, not a new commit.
            return .success(commits[0].lsn)
        }
        return await withCheckedContinuation { continuation in
            waiters[request.requestID, default: []].append(continuation)
            for action in actions {
                if case .append(let records) = action {
                    for r in records {
                        uncommitted.append((r.lsn.seq, r.count))
                        metrics.uncommittedBytes += r.count
                    }
                    metrics.peakUncommittedBytes = max(metrics.peakUncommittedBytes, metrics.uncommittedBytes)
                }
            }
            perform(actions)
        }
    }

    /// Records from `sender` under `epoch`. Returns the error to send back (the connection then
    /// closes and the predecessor resends after the position we report).
    func replicate(_ records: [EncodedRecord], epoch: UInt64, from sender: NodeID) -> CatenaError? {
        if let failure { return failure }
        guard machine != nil else { return CatenaError(.epochAhead, "\(me) has no configuration yet") }
        guard machine!.configuration.predecessor(of: me)?.id == sender else {
            return CatenaError(.protocolViolation, "\(sender) is not \(me)'s predecessor at epoch \(machine!.configuration.epoch)")
        }
        let before = machine!.lastAccepted.seq
        // Records the local log would refuse (a value above this node's limit, a broken upload)
        // are refused here, before the machine accepts them: a bad batch costs the connection,
        // not the node. Only a failure to write or persist stops the node.
        do {
            try store.check(records.filter { $0.lsn.seq > before })
        } catch where error.code != .ioFailure && error.code != .diskFull && error.code != .closed {
            // The chain cannot pass this node until an operator looks (or, later, the master
            // replaces it): say so loudly.
            logger.error("refusing records from the predecessor that the local log would not take; replication is stuck here",
                         metadata: [LogKey.peer: "\(sender)", "error": "\(error)"])
            return CatenaError(.protocolViolation, "\(me) cannot take these records: \(error)")
        } catch {
            failStop(error)
            return error
        }
        let actions = machine!.replicate(records, epoch: epoch)
        metrics.recordsReplicated += Int(machine!.lastAccepted.seq - before)
        return perform(actions)
    }

    /// The local log made everything through `lsn` durable.
    func durable(through lsn: LSN) {
        guard machine != nil else { return }
        perform(machine!.durable(through: lsn))
        link?.durable(through: lsn)
        unblockReadsIfCaughtUp()
    }

    /// The predecessor `sender` held everything through `lsn` when the link started: once that is
    /// durable here, this node (if it was just appended) holds every committed write.
    func readTarget(_ lsn: LSN, from sender: NodeID) {
        guard machine?.configuration.predecessor(of: me)?.id == sender, view.snapshot.readsBlocked else { return }
        readTarget = lsn
        unblockReadsIfCaughtUp()
    }

    private func unblockReadsIfCaughtUp() {
        guard let target = readTarget, let machine, machine.durable.seq >= target.seq else { return }
        readTarget = nil
        view.update { $0.readsBlocked = false }
        logger.info("holds everything its predecessor had when it joined; serving reads", metadata: [LogKey.lsn: "\(target)"])
    }

    /// The successor `sender` acknowledged everything through `lsn`.
    func acknowledged(through lsn: LSN, epoch: UInt64, from sender: NodeID) -> CatenaError? {
        guard machine != nil, machine!.configuration.successor(of: me)?.id == sender else {
            return CatenaError(.protocolViolation, "\(sender) is not \(me)'s successor")
        }
        return perform(machine!.acknowledged(through: lsn, epoch: epoch))
    }

    /// A (re)connected successor reports its last LSN: drop what it has from the link's queue
    /// and resend the rest from the log.
    func successorReported(_ lsn: LSN, epoch: UInt64, from sender: NodeID, link reporter: ReplicationLink) -> CatenaError? {
        guard let link, link === reporter, machine?.configuration.successor(of: me)?.id == sender else {
            return CatenaError(.protocolViolation, "\(sender) is not \(me)'s successor")
        }
        link.dropQueued(through: lsn.seq)
        let last = machine!.lastAccepted
        if let error = perform(machine!.successorReported(lastLSN: lsn, epoch: epoch)) {
            successorPositionKnown = false
            if lsn.seq > last.seq {
                logger.error("the successor holds records this log lacks; taking no writes (the log lost data it had made durable, or the successor diverged)",
                             metadata: [LogKey.peer: "\(sender)", "catena_successor_lsn": "\(lsn)", LogKey.lsn: "\(last)"])
            }
            return error
        }
        successorPositionKnown = true
        return nil
    }

    /// The last LSN accepted here: what a new successor must hold before it answers reads.
    var lastAccepted: LSN { machine?.lastAccepted ?? store.lastEnqueuedLSN }

    /// The predecessor `node` connected: acknowledgements go to it from now on. Returns what to
    /// tell it first: the last LSN here and the last acknowledged.
    func attachUpstream(_ node: NodeID, acks: AckSender) -> (position: LSN, acknowledged: LSN, epoch: UInt64)? {
        guard let machine, failure == nil, machine.configuration.predecessor(of: me)?.id == node else { return nil }
        upstream?.acks.close()
        upstream = (node, acks)
        return (machine.lastAccepted, machine.acknowledged, machine.configuration.epoch)
    }

    /// The predecessor's connection ended.
    func detachUpstream(_ acks: AckSender) {
        if let upstream, upstream.acks === acks { self.upstream = nil }
        acks.close()
    }

    /// The local log failed: stop (see the type's documentation).
    func failStop(_ error: CatenaError) {
        guard failure == nil else { return }
        failure = error
        logger.critical("local log failed; this node stops taking writes and replication until restarted", metadata: ["error": "\(error)"])
        view.update { $0.failure = error }
        answerAllWaiters(error)
        wakeAdmission()
    }

    /// Stops taking new writes and waits (up to `timeout`) until the writes taken have committed.
    func drain(timeout: Duration) async {
        draining = true
        await stopJoining()
        wakeAdmission()
        let deadline = ContinuousClock.now + timeout
        while !waiters.isEmpty, ContinuousClock.now < deadline, failure == nil {
            try? await Task.sleep(for: .milliseconds(10))
        }
        // What did not commit in time is answered "unknown": the client retries with the same
        // request id at whatever head the chain has then, which knows whether it committed.
        answerAllWaiters(CatenaError(.unavailable, "\(me) shut down before the write committed; retry with the same request id"))
        closeLinks()
    }

    /// Cancels the catch-up, if one runs, and waits until it has stopped (what it installed is
    /// durable then).
    private func stopJoining() async {
        guard let join = joining else { return }
        join.task.cancel()
        joining = nil
        await join.task.value
    }

    /// Answers every write waiting here with `error`.
    private func answerAllWaiters(_ error: CatenaError) {
        let all = waiters
        waiters = [:]
        for list in all.values { for w in list { w.resume(returning: .failure(error)) } }
    }

    /// Closes the successor link and the predecessor's acknowledgement channel.
    private func closeLinks() {
        link?.close()
        link = nil
        upstream?.acks.close()
        upstream = nil
    }

    /// Ends the stream of append tickets (shutdown, after the drain).
    func finishDurabilityFeedback() {
        durableTickets.finish()
    }

    var currentMetrics: ReplicaMetrics {
        var m = metrics
        m.inFlightBytes = machine?.inFlightBytes ?? 0
        m.lastAccepted = machine?.lastAccepted ?? .zero
        m.acknowledged = machine?.acknowledged ?? .zero
        return m
    }

    // MARK: - Rejoining

    /// Not a member: truncates what the chain does not share, then copies what is missing from
    /// `tail` until cancelled — the master appends this node once it is close enough, and the
    /// configuration that does so cancels this task.
    private func rejoin(from tail: ChainMember) async {
        // The current epoch's first seq decides whether records of the last epoch are shared;
        // its head reports it within a heartbeat of taking over.
        for _ in 0..<40 where !Task.isCancelled {
            guard let epoch = machine?.configuration.epoch, history.firstSeq(of: epoch) == nil else { break }
            try? await Task.sleep(for: .milliseconds(50))
        }
        var backoff = Duration.milliseconds(20)
        var truncated = false
        var fullCopy = false
        while !Task.isCancelled {
            do throws(CatenaError) {
                if !truncated {
                    try await truncateToShared()
                    truncated = true
                }
                try await catchUp(from: tail, fullCopy: fullCopy)
                backoff = .milliseconds(20)
            } catch where error.code == .lsnOutOfOrder || error.code == .historyCompacted {
                // The tail does not hold this log's last record (it diverged in a way the history
                // could not show, or compaction dropped what follows it): copy everything — all
                // that compaction kept, if it has run.
                if error.code == .historyCompacted { fullCopy = true }
                logger.warning("the tail cannot continue this log; discarding it for a full copy", metadata: [
                    LogKey.peer: "\(tail.id)", "error": "\(error)", LogKey.lsn: "\(store.lastEnqueuedLSN)",
                ])
                do throws(CatenaError) {
                    let removed = try await store.truncate(after: .zero)
                    logger.warning("truncated the whole log", metadata: ["catena_records_removed": "\(removed)"])
                } catch {
                    failStop(error)
                    return
                }
            } catch {
                if Task.isCancelled { return }
                if error.code == .ioFailure || error.code == .diskFull || error.code == .closed {
                    failStop(error)
                    return
                }
                logger.info("catch-up interrupted; resuming", metadata: [LogKey.peer: "\(tail.id)", "error": "\(error)"])
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(1))
            }
        }
    }

    /// Copies what the local log lacks from `tail` (LZ4 chunks, verified before they are
    /// installed) and follows it until cancelled.
    private func catchUp(from tail: ChainMember, fullCopy: Bool) async throws(CatenaError) {
        var settings = CatchUpReceiver.Configuration(source: try Address(parsing: tail.address), clusterID: links.clusterID,
                                                     chainID: machine?.configuration.chainID ?? 0)
        settings.name = me.rawValue
        settings.compress = links.catchUpCompression
        settings.maxBytesPerSecond = links.catchUpBytesPerSecond
        settings.fullCopy = fullCopy
        settings.limits = links.limits
        let view = self.view
        view.update { $0.catchUp = CatchUpProgress(lastLSN: store.highestLSN) }
        _ = try await CatchUpReceiver(configuration: settings, store: store, logger: logger).run(progress: { progress in
            view.update { $0.catchUp = progress }
        })
    }

    /// Gives up the machine and its role — pending writes are refused (their clients retry at
    /// the new head, which knows whether they committed), links and the catch-up stop — then
    /// truncates what the chain does not share and reads the request ids of what is left, so
    /// that ``configure(_:standing:history:)`` builds a fresh machine.
    private func leaveRoleAndTruncate() async {
        await stopJoining()
        answerAllWaiters(CatenaError(.redirect, "\(me) is no longer the head; retry with the same request id at the new head, which knows whether it committed"))
        releaseUncommitted(through: .max)
        closeLinks()
        machine = nil
        view.update { $0.role = nil }
        do throws(CatenaError) {
            try await truncateToShared()
        } catch {
            failStop(error)
            return
        }
        recentRequests = await Replica.recentRequests(in: store, limit: ReplicaStateMachine.Limits().rememberedRequests, logger: logger)
    }

    /// Truncates the local log after the last record it shares with the chain, by the master's
    /// epoch history: records after it were written by a head that was replaced before they
    /// committed, and must never be served or forwarded (nor their LSNs reused).
    private func truncateToShared() async throws(CatenaError) {
        let last = store.lastEnqueuedLSN
        guard last != .zero else { return }
        let store = self.store
        let shared = try await history.lastShared(myLastSeq: last.seq) { (seq) async throws(CatenaError) -> UInt64 in
            seq == last.seq ? last.epoch : try await Replica.lsn(atSeq: seq, in: store).epoch
        }
        guard shared < last.seq else { return }
        let at = shared == 0 ? LSN.zero : try await Replica.lsn(atSeq: shared, in: store)
        let removed = try await store.truncate(after: at)
        logger.warning("truncated writes the chain never committed (written by a replaced head)", metadata: [
            "catena_records_removed": "\(removed)", LogKey.lsn: "\(at)", "catena_log_end": "\(last)",
        ])
    }

    /// The LSN of the record at `seq` in `store`'s log.
    private static func lsn(atSeq seq: UInt64, in store: Store) async throws(CatenaError) -> LSN {
        var records = try store.records(after: LSN(epoch: 0, seq: seq - 1)).makeAsyncIterator()
        guard let r = try await records.nextRecord(), r.lsn.seq == seq else {
            throw CatenaError(.corruption, "the local log has no record at seq \(seq)")
        }
        return r.lsn
    }

    /// The request ids of the last records of `store`'s log (at most `limit` records, read from
    /// at most the last 256 MiB of segments), in LSN order: what a restarted or rejoined node
    /// needs to answer retries exactly once.
    ///
    /// Damage in that stretch (reported by the store, never served) ends the scan early with a
    /// warning: the node still starts, and retries of writes past the damage are not recognised.
    static func recentRequests(in store: Store, limit: Int, logger: Logger) async -> [ReplicaStateMachine.Commit] {
        let last = store.lastEnqueuedLSN
        guard last != .zero else { return [] }
        var start = LSN(epoch: 0, seq: last.seq > UInt64(limit) ? last.seq - UInt64(limit) : 0)
        var bytes: UInt64 = 0
        for segment in store.segments.reversed() {
            bytes += segment.byteSize
            if bytes > 256 << 20 {
                start = LSN(epoch: 0, seq: max(start.seq, segment.lastLSN.seq))
                break
            }
        }
        start = LSN(epoch: 0, seq: max(start.seq, store.compactedThrough.seq))
        var out: [ReplicaStateMachine.Commit] = []
        do throws(CatenaError) {
            var records = try store.records(after: start).makeAsyncIterator()
            while let r = try await records.nextRecord() {
                if r.header.requestID != .none { out.append(.init(requestID: r.header.requestID, lsn: r.lsn)) }
            }
        } catch {
            logger.warning("could not read the request ids of the whole log tail; retries of later writes are not recognised",
                           metadata: ["error": "\(error)", "catena_requests_read": "\(out.count)"])
        }
        return out
    }

    // MARK: - The interpreter

    /// Performs `actions` in order; returns the first refusal of a replication message.
    @discardableResult
    private func perform(_ actions: [ReplicaStateMachine.Action]) -> CatenaError? {
        var replicationError: CatenaError?
        for action in actions {
            logger.trace("action", metadata: ["action": "\(action)"])
            switch action {
            case .append(let records):
                guard failure == nil else { return failure }
                do {
                    let ticket = try store.enqueue(records)
                    durableTickets.yield((ticket, records.last!.lsn))
                } catch {
                    failStop(error)
                    return error
                }
            case .forward(let records, let to):
                linkTo(to)?.forward(records)
            case .resend(let after, let through, let to):
                linkTo(to)?.resend(after: after, through: through)
            case .acknowledge(let through, let to):
                if let upstream, upstream.node == to.id {
                    upstream.acks.send(through, epoch: machine?.configuration.epoch ?? 0)
                }
            case .committed(let commits):
                for c in commits {
                    metrics.writesCommitted += 1
                    if let list = waiters.removeValue(forKey: c.requestID) {
                        for w in list { w.resume(returning: .success(c.lsn)) }
                    }
                }
                releaseUncommitted(through: commits.last!.lsn.seq)
            case .refuse(let id, let error):
                if let id {
                    metrics.writesRefused += 1
                    if let list = waiters.removeValue(forKey: id) {
                        for w in list { w.resume(returning: .failure(error)) }
                    }
                } else if replicationError == nil {
                    replicationError = error
                }
            }
        }
        if machine?.role?.takesWrites != true, !uncommitted.isEmpty {
            // Demoted: what was pending is decided by the new head.
            releaseUncommitted(through: .max)
        }
        return replicationError
    }

    private var uncommittedBytes: Int { metrics.uncommittedBytes }

    private func releaseUncommitted(through seq: UInt64) {
        while uncommittedHead < uncommitted.count, uncommitted[uncommittedHead].seq <= seq {
            metrics.uncommittedBytes -= uncommitted[uncommittedHead].bytes
            uncommittedHead += 1
        }
        if uncommittedHead > 1024 && uncommittedHead * 2 > uncommitted.count {
            uncommitted.removeFirst(uncommittedHead)
            uncommittedHead = 0
        }
        wakeAdmission()
    }

    private func wakeAdmission() {
        let waiting = admission
        admission = []
        for w in waiting { w.resume() }
    }

    private func refused(_ error: CatenaError) -> Result<LSN, CatenaError> {
        metrics.writesRefused += 1
        return .failure(error)
    }

    /// The link to `member`, replacing a link to another node or address.
    private func linkTo(_ member: ChainMember) -> ReplicationLink? {
        if let link, link.target == member { return link }
        link?.close()
        let new = ReplicationLink(target: member, me: me, clusterID: links.clusterID, store: store, view: view,
                                  maxBatchBytes: links.maxBatchBytes, limits: links.limits,
                                  durable: machine?.durable ?? store.highestLSN, logger: logger)
        successorPositionKnown = false
        link = new
        new.start(replica: self)
        return new
    }

    /// Keeps the successor link and the read view in line with the configuration.
    private func updateLinks() {
        guard let machine else { return }
        view.update {
            $0.configuration = machine.configuration
            $0.role = machine.role
        }
        if let next = machine.configuration.successor(of: me) {
            _ = linkTo(next)
        } else {
            link?.close()
            link = nil
        }
    }
}
