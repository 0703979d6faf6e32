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
        var epoch: UInt64 { configuration?.epoch ?? 0 }
    }

    private let state = Mutex(Snapshot())

    var snapshot: Snapshot { state.withLock { $0 } }

    func update(_ body: (inout Snapshot) -> Void) {
        state.withLock { body(&$0) }
    }
}

/// How the replica builds its successor link.
struct LinkSettings: Sendable {
    var clusterID: String
    var maxBatchBytes: Int
    var limits: ConnectionLimits
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

    /// A configuration from the master: the first builds the machine over the local log; later
    /// ones (newer epochs) reconfigure it.
    func configure(_ configuration: ChainConfiguration) {
        if machine == nil {
            // The node bounds memory itself (uncommitted bytes at the head, which covers the
            // whole chain's in-flight bytes), so the machine's own bound never refuses.
            var limits = ReplicaStateMachine.Limits()
            limits.maxInFlightBytes = Int.max >> 1
            machine = ReplicaStateMachine(me: me, configuration: configuration, lastLSN: store.lastEnqueuedLSN,
                                          recentRequests: recentRequests, limits: limits)
            recentRequests = []
            logger.info("configured", metadata: [
                LogKey.epoch: "\(configuration.epoch)", LogKey.role: "\(configuration.role(of: me).map { "\($0)" } ?? "none")",
                LogKey.lsn: "\(store.lastEnqueuedLSN)",
            ])
            updateLinks()
            return
        }
        guard configuration.epoch > machine!.configuration.epoch else { return }
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
        if machine!.role?.takesWrites == true, let next = machine!.configuration.successor(of: me), !successorPositionKnown {
            return refused(CatenaError(.unavailable, "\(me) waits for its successor \(next.id) to report its position"))
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
        let all = waiters
        waiters = [:]
        for list in all.values { for w in list { w.resume(returning: .failure(error)) } }
        wakeAdmission()
    }

    /// Stops taking new writes and waits (up to `timeout`) until the writes taken have committed.
    func drain(timeout: Duration) async {
        draining = true
        wakeAdmission()
        let deadline = ContinuousClock.now + timeout
        while !waiters.isEmpty, ContinuousClock.now < deadline, failure == nil {
            try? await Task.sleep(for: .milliseconds(10))
        }
        // What did not commit in time is answered "unknown": the client retries with the same
        // request id at whatever head the chain has then, which knows whether it committed.
        let unfinished = waiters
        waiters = [:]
        let error = CatenaError(.unavailable, "\(me) shut down before the write committed; retry with the same request id")
        for list in unfinished.values { for w in list { w.resume(returning: .failure(error)) } }
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
