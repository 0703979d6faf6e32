import CatenaCore
import CatenaNetwork
import CatenaStorage
import CatenaWire
import CoreMetrics
import DequeModule
import Logging
import Synchronization

/// What the connection handlers read without taking the replica's lock: the machine's published view, and
/// how a catch-up is going. Updated by the ``Replica``.
final class ReplicaView: Sendable {
    /// Records, their bytes and the bytes received for them, summed over catch-ups.
    struct CatchUpTotals: Sendable {
        var records = 0
        var bytes = 0
        var wireBytes = 0

        mutating func add(_ p: CatchUpProgress) {
            records += p.recordsInstalled
            bytes += p.recordBytesInstalled
            wireBytes += p.wireBytes
        }
    }

    struct Snapshot: Sendable {
        var node = NodeStateMachine.View()
        /// Not a member: how the catch-up from the tail is going (the last one's, once it ended).
        var catchUp: CatchUpProgress?
        /// What the catch-ups before ``catchUp`` installed, for the metrics' counters.
        var catchUpsBefore = CatchUpTotals()
        var epoch: UInt64 { node.epoch }
        var configuration: ChainConfiguration? { node.configuration }
        var role: ChainRole? { node.role }
    }

    private let state = Mutex(Snapshot())

    var snapshot: Snapshot { state.withLock { $0 } }

    func update(_ body: (inout Snapshot) -> Void) {
        state.withLock { body(&$0) }
    }
}

/// How the replica builds its successor link and its catch-up.
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
    /// Times a write waited for room under the uncommitted-bytes bound.
    public var writesThrottled = 0
    /// Bytes forwarded and not yet acknowledged by the successor (the Sent list).
    public var inFlightBytes = 0
    /// Records forwarded and not yet acknowledged by the successor (the Sent list's length).
    public var sentRecords = 0
    /// Records accepted here that the successor has not acknowledged: in the Sent list, or not
    /// yet durable here (so not yet forwarded). 0 without a successor.
    public var lagRecords: UInt64 = 0
    /// How long the oldest record forwarded and not yet acknowledged has waited (zero if none).
    public var lagDuration: Duration = .zero
    /// The highest LSN accepted into the local log.
    public var lastAccepted = LSN.zero
    /// The highest LSN acknowledged upstream (the head: committed).
    public var acknowledged = LSN.zero
    /// Records removed by truncations.
    public var recordsTruncated = 0
    /// Master configurations refused as older than one this node has seen.
    public var staleConfigurationsRefused = 0
    /// Request ids forgotten inside the request window because of the memory cap.
    public var requestsForgottenEarly = 0
}

/// The one interpreter of this node's ``NodeStateMachine``: it feeds the machine events (client
/// writes, replicated records, durability, acknowledgements, heartbeat replies, the results of
/// slow work) and performs every action it returns — appending to the local store, forwarding
/// over the successor link, acknowledging upstream, answering clients, truncating, loading the
/// log, catching up. Every rule is the machine's; this class does I/O only.
///
/// Not an actor: each event is handled under one lock, on the thread that brings it — the
/// connection's reader for writes and replicated records, the store's writer (or syncer) thread
/// for durability — so the hot path hands no batch to another task or executor. Fast actions
/// run under the lock, in order: an append is enqueued in the store, a forward queued on the
/// link, an acknowledgement queued for the predecessor before the next event is taken, so the
/// log's order and the links' order are the machine's. Nothing done under the lock blocks or
/// calls back into the replica. Slow actions (persisting the configuration, truncating, reading
/// the log, stopping a catch-up) run one after another on one task, and feed their results back
/// to the machine as events.
final class Replica: Sendable {
    let me: NodeID
    let store: Store
    let view = ReplicaView()
    private let logger: Logger
    private let clock: any NodeClock
    private let links: LinkSettings
    /// Called when the master forgot this node: the node stops.
    private let onStop: @Sendable () -> Void
    /// Records each replication hop: from a forward to the successor's acknowledgement of it.
    private let hop: CoreMetrics.Timer
    private let core: Mutex<Core>
    /// ``committed``'s seq.
    private let committedSeq = Atomic<UInt64>(0)

    private struct Core: ~Copyable {
        var machine: NodeStateMachine
        /// What to do with each write's outcome once it commits or is refused.
        var waiters: [RequestID: [@Sendable (Result<LSN, CatenaError>) -> Void]] = [:]
        /// Writes ``submit(_:reply:)`` took while the head held too much uncommitted: taken
        /// again, in order, once woken.
        var throttledSubmits: [(WriteRequest, @Sendable (Result<LSN, CatenaError>) -> Void)] = []
        var link: ReplicationLink?
        var upstream: (node: NodeID, acks: AckSender)?
        /// The catch-up from the tail, while one runs.
        var catchUp: Task<Void, Never>?
        /// Slow actions, performed one after another by `slowRunner`.
        var slowQueue = Deque<NodeStateMachine.Action>()
        var slowRunner: Task<Void, Never>?
        /// Appends not yet reported durable, in log order, with the last LSN of each.
        var appends = Deque<(ticket: AppendTicket, last: LSN)>()
        /// An append completed while the lock was held (so its callback could not be kept):
        /// ``ticketsCompleted()`` runs once the lock is released.
        var completedUnheard = false
        /// The forwards not yet acknowledged: the last seq of each, and when it was sent.
        var forwarded = Deque<(seq: UInt64, at: ContinuousClock.Instant)>()

        init(machine: NodeStateMachine) {
            self.machine = machine
        }
    }

    init(me: NodeID, store: Store, settings: NodeStateMachine.Settings, clock: any NodeClock, logger: Logger, links: LinkSettings,
         recentRequests: [ReplicaStateMachine.RememberedRequest], seen: SeenChain?,
         hop: CoreMetrics.Timer = CoreMetrics.Timer(label: CatenaMetric.replicationHop.name, factory: NOOPMetricsHandler.instance),
         onStop: @escaping @Sendable () -> Void) {
        self.me = me
        self.hop = hop
        self.store = store
        self.clock = clock
        self.logger = logger
        self.links = links
        self.onStop = onStop
        self.core = Mutex(Core(machine: NodeStateMachine(me: me, settings: settings, logEnd: store.lastEnqueuedLSN,
                                                          recentRequests: recentRequests, seen: seen)))
    }

    /// Runs `body` under the lock, then reports appends that completed meanwhile.
    private func withCore<R: Sendable>(_ body: (inout Core) -> R) -> R {
        let (result, completed) = core.withLock { c in
            let result = body(&c)
            defer { c.completedUnheard = false }
            return (result, c.completedUnheard)
        }
        if completed { ticketsCompleted() }
        return result
    }

    var configuration: ChainConfiguration? { core.withLock { $0.machine.configuration } }

    // MARK: - Events

    /// The master answered the heartbeat sent at `sentAt` (node clock).
    func heartbeatReplied(_ reply: NodeStateMachine.Reply, sentAt: UInt64) {
        let now = clock.nanoseconds
        withCore { c in
            handle(c.machine.tick(now: now), &c)
            handle(c.machine.heartbeatReplied(reply, sentAt: sentAt, logEnd: store.lastEnqueuedLSN, now: now), &c)
        }
    }

    /// Waits (at most `timeout`) until the slow actions queued so far are done.
    func settle(timeout: Duration) async {
        let deadline = ContinuousClock.now + timeout
        while core.withLock({ $0.slowRunner != nil }), ContinuousClock.now < deadline {
            await Self.pause(.milliseconds(1))
        }
    }

    /// Sleeps for `duration`, also in a cancelled task (shutdown drains in one), whose own
    /// sleep would return at once and make a wait loop spin on a thread the work it waits for
    /// needs: the sleep runs in a task of its own, which does not inherit the cancellation.
    private static func pause(_ duration: Duration) async {
        await Task { try? await Task.sleep(for: duration) }.value
    }

    /// What the next heartbeat says: the position of the log (durable, or all of it from a node
    /// that is no member; read here, with the rest, in one step of the machine), the epoch start
    /// the head must report, the failure that stopped this node, the epoch it runs.
    var heartbeatContent: (position: LSN, epochStart: EpochStart?, failure: CatenaError?, epoch: UInt64) {
        core.withLock { c in
            (c.machine.positionToReport(durable: store.highestLSN, logEnd: store.lastEnqueuedLSN),
             c.machine.epochStartToReport, c.machine.failure, c.machine.heartbeatEpoch)
        }
    }

    /// Whether the heartbeat being sent at `sentAt` says this node holds no lease
    /// (``NodeStateMachine/reportLeaseless(sentAt:)``).
    func reportLeaseless(sentAt: UInt64) -> Bool {
        core.withLock { $0.machine.reportLeaseless(sentAt: sentAt) }
    }

    /// A client write at the head, without waiting: `reply` gets the outcome once the write
    /// committed or was refused (called under the replica's lock: it must only hand the reply
    /// on). A write that must wait for room under the uncommitted-bytes bound is taken again once
    /// there is.
    func submit(_ request: WriteRequest, reply: @escaping @Sendable (Result<LSN, CatenaError>) -> Void) {
        let now = clock.nanoseconds, wallClock = wallClockNanoseconds()
        withCore { c in submit(request, reply: reply, now: now, wallClock: wallClock, &c) }
    }

    private func submit(_ request: WriteRequest, reply: @escaping @Sendable (Result<LSN, CatenaError>) -> Void,
                        now: UInt64, wallClock: UInt64, _ c: inout Core) {
        let store = self.store
        let actions = c.machine.write(request, now: now, wallClock: wallClock, durableVersion: { (key) throws(CatenaError) in
            try store.version(of: key)
        }, admit: { (r) throws(CatenaError) in
            try store.check(r)
        })
        if actions == [.throttled] {
            c.throttledSubmits.append((request, reply))
        } else if actions.count == 1, case .replica(.refuse(_, let error)) = actions[0] {
            reply(.failure(error))
        } else if actions.count == 1, case .replica(.committed(let commits)) = actions[0] {
            reply(.success(commits[0].lsn))
        } else {
            c.waiters[request.requestID, default: []].append(reply)
            handle(actions, &c)
        }
    }

    /// Records from `sender` under `epoch`. Returns the error to send back (the connection then
    /// closes and the predecessor resends after the position we report).
    func replicate(_ records: [EncodedRecord], epoch: UInt64, from sender: NodeID) -> CatenaError? {
        let store = self.store
        return withCore { c in
            handle(c.machine.replicate(records, epoch: epoch, from: sender) { (r) throws(CatenaError) in try store.check(r, strict: false) }, &c)
        }
    }

    /// Appends completed: reports them to the machine in log order — durable through the last
    /// of a run of successes, or the log's failure — as far as they have completed. Runs on the
    /// thread that completed them (the store's writer or syncer), or after the lock if an append
    /// completed while it was held.
    private func ticketsCompleted() {
        withCore { c in
            var durable: LSN?
            while let first = c.appends.first, let result = first.ticket.result {
                c.appends.removeFirst()
                switch result {
                case .success:
                    durable = first.last
                case .failure(let error):
                    if let lsn = durable { handle(c.machine.durable(through: lsn), &c) }
                    durable = nil
                    handle(c.machine.logFailed(error), &c)
                }
            }
            if let lsn = durable { handle(c.machine.durable(through: lsn), &c) }
        }
    }

    /// The predecessor `sender` held everything through `lsn` when the link started.
    func readTarget(_ lsn: LSN, from sender: NodeID) {
        withCore { c in _ = handle(c.machine.readTarget(lsn, from: sender), &c) }
    }

    /// The successor `sender` acknowledged everything through `lsn`, and holds its log (and each
    /// member after it theirs) through `held`.
    func acknowledged(through lsn: LSN, held: [LSN], epoch: UInt64, from sender: NodeID) -> CatenaError? {
        withCore { c in
            let error = handle(c.machine.acknowledged(through: lsn, held: held, epoch: epoch, from: sender), &c)
            let acknowledged = c.machine.replica?.downstreamAcknowledged.seq ?? 0
            let now = ContinuousClock.now
            while let first = c.forwarded.first, first.seq <= acknowledged {
                hop.recordNanoseconds((now - first.at).nanosecondsClamped)
                c.forwarded.removeFirst()
            }
            // Nothing in flight (a new successor, a truncation): what is left is not waited for.
            if c.machine.replica?.sentCount ?? 0 == 0 { c.forwarded.removeAll() }
            return error
        }
    }

    /// A (re)connected successor reports its last LSN on `reporter`'s new connection.
    func successorReported(_ lsn: LSN, epoch: UInt64, from sender: NodeID, link reporter: ReplicationLink) -> CatenaError? {
        withCore { c in
            guard let link = c.link, link === reporter else {
                return CatenaError(.protocolViolation, "\(sender) is not \(me)'s successor")
            }
            return handle(c.machine.successorReported(lsn, epoch: epoch, from: sender), &c)
        }
    }

    /// The last LSN accepted here: what a new successor must hold before it answers reads.
    var lastAccepted: LSN { core.withLock { $0.machine.lastAccepted } ?? store.lastEnqueuedLSN }

    /// What this node may take as on every replica (``NodeStateMachine/commitWatermark``).
    var commitWatermark: LSN { core.withLock { $0.machine.commitWatermark } }

    /// The seq of ``commitWatermark``, kept current after every event for the read path, which
    /// reads it without the replica's lock: a read of a key whose newest version here is above
    /// it asks the tail which version is committed (``NodeStateMachine/View/committedVersionSource(mode:version:committed:)``).
    /// A read may see it a moment behind the machine's: lower, it asks the tail more often;
    /// higher (just before a rebuild resets it), it is still a committed LSN — committed stays
    /// committed.
    var committed: LSN { LSN(epoch: 0, seq: committedSeq.load(ordering: .acquiring)) }

    /// The predecessor `node` connected: acknowledgements go to it from now on. Returns what to
    /// tell it first: the last LSN here and the last acknowledged.
    func attachUpstream(_ node: NodeID, acks: AckSender) -> (position: LSN, acknowledged: LSN, epoch: UInt64)? {
        core.withLock { c in
            guard let start = c.machine.upstreamStart(for: node) else { return nil }
            c.upstream?.acks.close()
            c.upstream = (node, acks)
            return start
        }
    }

    /// The predecessor's connection ended.
    func detachUpstream(_ acks: AckSender) {
        core.withLock { c in
            if let upstream = c.upstream, upstream.acks === acks { c.upstream = nil }
        }
        acks.close()
    }

    /// The local log failed: stop (see ``NodeStateMachine/logFailed(_:)``).
    func logFailed(_ error: CatenaError) {
        withCore { c in _ = handle(c.machine.logFailed(error), &c) }
    }

    /// Stops taking new writes and waits (up to `timeout`) until the writes taken have committed,
    /// then answers whatever is left and closes the links.
    func drain(timeout: Duration) async {
        withCore { c in _ = handle(c.machine.drain(), &c) }
        let deadline = ContinuousClock.now + timeout
        while core.withLock({ !$0.waiters.isEmpty && $0.machine.failure == nil }), ContinuousClock.now < deadline {
            await Self.pause(.milliseconds(10))
        }
        withCore { c in _ = handle(c.machine.drainEnded(), &c) }
        await settle(timeout: .seconds(5))
        await stopCatchUp()
    }

    var currentMetrics: ReplicaMetrics {
        core.withLock { c in
            let machine = c.machine
            let counters = machine.counters
            var m = ReplicaMetrics()
            m.writesCommitted = counters.writesCommitted
            m.writesRefused = counters.writesRefused
            m.recordsReplicated = counters.recordsReplicated
            m.peakUncommittedBytes = counters.peakUncommittedBytes
            m.writesThrottled = counters.writesThrottled
            m.recordsTruncated = counters.recordsTruncated
            m.staleConfigurationsRefused = counters.staleConfigurationsRefused
            m.requestsForgottenEarly = counters.requestsForgottenEarlyBefore + (machine.replica?.requestsForgottenEarly ?? 0)
            m.uncommittedBytes = machine.replica?.uncommittedBytes ?? 0
            m.inFlightBytes = machine.replica?.inFlightBytes ?? 0
            m.sentRecords = machine.replica?.sentCount ?? 0
            if let r = machine.replica, r.role != nil, machine.configuration?.successor(of: me) != nil {
                // In the Sent list, or accepted and not yet durable here (so not yet forwarded).
                m.lagRecords = UInt64(r.sentCount) + (r.lastAccepted.seq - min(r.durable.seq, r.lastAccepted.seq))
            }
            if m.sentRecords > 0, let oldest = c.forwarded.first { m.lagDuration = ContinuousClock.now - oldest.at }
            m.lastAccepted = machine.replica?.lastAccepted ?? .zero
            m.acknowledged = machine.replica?.acknowledged ?? .zero
            return m
        }
    }

    // MARK: - The interpreter

    /// Performs `actions` in order, under the lock: fast ones now, slow ones queued for the slow
    /// runner. Returns the first refusal of a replication message.
    @discardableResult
    private func handle(_ actions: [NodeStateMachine.Action], _ c: inout Core) -> CatenaError? {
        var replicationError: CatenaError?
        var resubmit: [(WriteRequest, @Sendable (Result<LSN, CatenaError>) -> Void)] = []
        var pending = Deque(actions)
        while let action = pending.popFirst() {
            logger.trace("action", metadata: .catena([.action: "\(action)"]))
            switch action {
            case .replica(let r):
                switch r {
                case .append(let records):
                    do {
                        let ticket = try store.enqueue(records)
                        c.appends.append((ticket, records.last!.lsn))
                        if !ticket.onCompletion({ [self] in ticketsCompleted() }) { c.completedUnheard = true }
                    } catch {
                        // What follows the append in this batch must not happen (a forward of a
                        // record the log lost): the machine's fail-stop actions replace it.
                        pending = Deque(c.machine.logFailed(error))
                        if replicationError == nil { replicationError = error }
                    }
                case .forward(let records, let to):
                    linkTo(to, &c).send(records)
                    // Only these are in flight (a new successor, a truncation, a new role): what
                    // was recorded before them is not waited for any more.
                    if c.machine.replica?.sentCount == records.count { c.forwarded.removeAll() }
                    if c.forwarded.count < 1 << 16 { c.forwarded.append((records[records.count - 1].lsn.seq, ContinuousClock.now)) }
                case .resend(let after, let through, let to):
                    linkTo(to, &c).resend(after: after, through: through)
                    // A new link: hops are timed from this send.
                    c.forwarded.removeAll()
                    c.forwarded.append((through.seq, ContinuousClock.now))
                case .acknowledge(let through, let held, let to):
                    if let upstream = c.upstream, upstream.node == to.id {
                        upstream.acks.send(through, held: held, epoch: c.machine.epoch)
                    }
                case .committed(let commits), .held(let commits):
                    for commit in commits {
                        if let list = c.waiters.removeValue(forKey: commit.requestID) {
                            for w in list { w(.success(commit.lsn)) }
                        }
                    }
                case .refuse(let id?, let error):
                    if let list = c.waiters.removeValue(forKey: id) {
                        for w in list { w(.failure(error)) }
                    }
                case .refuse(nil, let error):
                    if replicationError == nil { replicationError = error }
                }
            case .connectSuccessor(let member):
                _ = linkTo(member, &c)
            case .disconnectSuccessor:
                c.link?.close()
                c.link = nil
            case .clearSuccessorQueue:
                c.link?.clearQueue()
            case .disconnectPredecessor:
                c.upstream?.acks.close()
                c.upstream = nil
            case .answerAll(let error):
                let all = c.waiters
                c.waiters = [:]
                for list in all.values { for w in list { w(.failure(error)) } }
            case .throttled:
                break
            case .wakeThrottled:
                // Taken again once this batch's actions are done: their appends come first.
                resubmit.append(contentsOf: c.throttledSubmits)
                c.throttledSubmits = []
            case .publish(let v):
                view.update { $0.node = v }
            case .startCatchUp(let from, let fullCopy, let after):
                startCatchUp(from: from, fullCopy: fullCopy, after: after, &c)
            case .stop:
                onStop()
            case .awaitAdding:
                logger.warning("the master does not know this node; add it with `catena chain add-node \(me) --address ADDRESS`")
            case .note(let note):
                logger.log(level: Self.level(note.level), "\(note.message)", metadata: .catena([.epoch: "\(c.machine.epoch)"]))
            case .persistSeen, .truncateToShared, .discardLog, .loadLog, .stopCatchUp:
                c.slowQueue.append(action)
            }
        }
        if !c.slowQueue.isEmpty && c.slowRunner == nil {
            c.slowRunner = Task { await self.runSlow() }
        }
        let watermark = c.machine.commitWatermark
        if watermark.seq != committedSeq.load(ordering: .relaxed) {
            committedSeq.store(watermark.seq, ordering: .releasing)
            store.noteCommitted(through: watermark)
        }
        if !resubmit.isEmpty {
            let now = clock.nanoseconds, wallClock = wallClockNanoseconds()
            for (request, reply) in resubmit { submit(request, reply: reply, now: now, wallClock: wallClock, &c) }
        }
        return replicationError
    }

    private func runSlow() async {
        while let action = core.withLock({ c in
            let next = c.slowQueue.popFirst()
            if next == nil { c.slowRunner = nil }
            return next
        }) {
            await performSlow(action)
        }
    }

    /// Performs one slow action and feeds its result back to the machine.
    private func performSlow(_ action: NodeStateMachine.Action) async {
        do throws(CatenaError) {
            switch action {
            case .persistSeen(let seen):
                try await store.persistSeen(seen)
                let now = clock.nanoseconds
                withCore { c in _ = handle(c.machine.configurationPersisted(epoch: seen.configuration.epoch, logEnd: store.lastEnqueuedLSN, now: now), &c) }
            case .truncateToShared(let history, let keeping):
                let (end, removed) = try await truncateToShared(history, keeping: keeping)
                withCore { c in _ = handle(c.machine.truncated(end: end, removed: removed), &c) }
            case .discardLog:
                let removed = try await store.truncate(after: .zero)
                withCore { c in _ = handle(c.machine.truncated(end: store.lastEnqueuedLSN, removed: removed), &c) }
            case .loadLog:
                let recent = await Replica.recentRequests(in: store, logger: logger)
                withCore { c in _ = handle(c.machine.logLoaded(end: store.lastEnqueuedLSN, recentRequests: recent), &c) }
            case .stopCatchUp:
                await stopCatchUp()
            default:
                assertionFailure("\(action) is not a slow action")
            }
        } catch {
            withCore { c in _ = handle(c.machine.logFailed(error), &c) }
        }
    }

    private func stopCatchUp() async {
        let task: Task<Void, Never>? = core.withLock { c in
            defer { c.catchUp = nil }
            return c.catchUp
        }
        guard let task else { return }
        task.cancel()
        await task.value
    }

    // MARK: - Rejoining

    /// Starts copying from `tail` (after `delay` ns, and after any previous catch-up stopped);
    /// it follows the tail until stopped. A failure goes to the machine.
    private func startCatchUp(from tail: ChainMember, fullCopy: Bool, after delay: UInt64, _ c: inout Core) {
        let previous = c.catchUp
        previous?.cancel()
        c.catchUp = Task { [self] in
            await previous?.value
            if delay > 0 { try? await Task.sleep(for: .nanoseconds(Int64(clamping: delay))) }
            guard !Task.isCancelled else { return }
            do throws(CatenaError) {
                try await copy(from: tail, fullCopy: fullCopy)
            } catch {
                if Task.isCancelled { return }
                self.catchUpFailed(error)
            }
        }
    }

    private func catchUpFailed(_ error: CatenaError) {
        withCore { c in _ = handle(c.machine.catchUpFailed(error), &c) }
    }

    /// Copies what the local log lacks from `tail` (LZ4 chunks, verified before they are
    /// installed) and follows it until cancelled.
    private func copy(from tail: ChainMember, fullCopy: Bool) async throws(CatenaError) {
        var settings = CatchUpReceiver.Configuration(source: try Address(parsing: tail.address), clusterID: links.clusterID,
                                                     chainID: configuration?.chainID ?? 0)
        settings.name = me.rawValue
        settings.compress = links.catchUpCompression
        settings.maxBytesPerSecond = links.catchUpBytesPerSecond
        settings.fullCopy = fullCopy
        settings.limits = links.limits
        let view = self.view
        view.update { s in
            if let previous = s.catchUp { s.catchUpsBefore.add(previous) }
            s.catchUp = CatchUpProgress(lastLSN: store.highestLSN)
        }
        _ = try await CatchUpReceiver(configuration: settings, store: store, logger: logger).run(progress: { progress in
            view.update { $0.catchUp = progress }
        })
    }

    /// Truncates the local log after the last record it shares with the chain by `history`
    /// (never at or below `keeping` nor the store's commit watermark: those records are on every
    /// replica). Returns the log's new end and how many records went.
    private func truncateToShared(_ history: EpochHistory, keeping: LSN) async throws(CatenaError) -> (LSN, Int) {
        let last = store.lastEnqueuedLSN
        guard last != .zero else { return (last, 0) }
        let store = self.store
        let floor = max(keeping.seq, store.commitWatermark.seq)
        let shared = try await history.lastShared(myLastSeq: last.seq, keeping: floor) { (seq) async throws(CatenaError) -> UInt64 in
            seq == last.seq ? last.epoch : try await Replica.lsn(atSeq: seq, in: store).epoch
        }
        guard shared < last.seq else { return (last, 0) }
        let at = shared == 0 ? LSN.zero : try await Replica.lsn(atSeq: shared, in: store)
        let removed = try await store.truncate(after: at)
        return (store.lastEnqueuedLSN, removed)
    }

    /// The LSN of the record at `seq` in `store`'s log.
    private static func lsn(atSeq seq: UInt64, in store: Store) async throws(CatenaError) -> LSN {
        var records = try store.records(after: LSN(epoch: 0, seq: seq - 1)).makeAsyncIterator()
        guard let r = try await records.nextRecord(), r.lsn.seq == seq else {
            throw CatenaError(.corruption, "the local log has no record at seq \(seq)")
        }
        return r.lsn
    }

    /// The request ids of `store`'s records within its request window (read from record headers
    /// only), in LSN order: what a restarted or rejoined node needs to answer retries exactly
    /// once, whatever was written since (large uploads) and whatever compaction did.
    ///
    /// If the log cannot be read (damage in that stretch, reported by the store and never
    /// served), the node still starts, with a warning: retries of those writes are not
    /// recognised.
    static func recentRequests(in store: Store, logger: Logger) async -> [ReplicaStateMachine.RememberedRequest] {
        do throws(CatenaError) {
            return try await store.recentRequests(window: store.configuration.requestWindow).map {
                ReplicaStateMachine.RememberedRequest(requestID: $0.requestID, lsn: $0.lsn, timestamp: $0.timestamp, fence: $0.fence)
            }
        } catch {
            logger.warning("could not read the request ids of the request window; retries of those writes are not recognised",
                           metadata: .catena([.error: "\(error)"]))
            return []
        }
    }

    // MARK: - Links

    /// The link to `member`, replacing a link to another node or address.
    private func linkTo(_ member: ChainMember, _ c: inout Core) -> ReplicationLink {
        if let link = c.link, link.target == member { return link }
        c.link?.close()
        let new = ReplicationLink(target: member, me: me, clusterID: links.clusterID, store: store, view: view,
                                  maxBatchBytes: links.maxBatchBytes, limits: links.limits, logger: logger)
        c.link = new
        new.start(replica: self)
        return new
    }

    private static func level(_ level: NodeStateMachine.Note.Level) -> Logger.Level {
        switch level {
        case .debug: .debug
        case .info: .info
        case .notice: .notice
        case .warning: .warning
        case .error: .error
        case .critical: .critical
        }
    }
}
