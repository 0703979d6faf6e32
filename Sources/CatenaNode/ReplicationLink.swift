import CatenaCore
import CatenaNetwork
import CatenaStorage
import CatenaWire
import DequeModule
import Logging
import NIOCore
import Synchronization

/// The replication connection from this node to its successor: it sends what the replica
/// hands it, in order, and hands back what the successor says (its position, acknowledgements).
///
/// What to send and when is the ``NodeStateMachine``'s: records only once durable in the local
/// log (so every node's durable log contains its successor's), and on every (re)connection,
/// once the successor has reported the last LSN it holds, a resend from the local log of what it
/// lacks — the Sent list holds LSNs, not values. The link keeps a FIFO of work — batches of
/// records, and ranges to stream from the log — which the replica clears when the successor
/// reports on a new connection (whatever it held was for the old one).
final class ReplicationLink: Sendable {
    /// The successor.
    let target: ChainMember
    private let me: NodeID
    private let clusterID: String
    private let store: Store
    private let view: ReplicaView
    private let maxBatchBytes: Int
    private let limits: ConnectionLimits
    private let logger: Logger
    private let state = Mutex(State())

    private enum Work {
        case records([EncodedRecord])
        case fromLog(after: LSN, through: LSN)
    }

    private struct State: ~Copyable {
        var queue = Deque<Work>()
        var queuedBytes = 0
        var waiter: CheckedContinuation<Void, Never>?
        var closed = false
        var task: Task<Void, Never>?
    }

    init(target: ChainMember, me: NodeID, clusterID: String, store: Store, view: ReplicaView,
         maxBatchBytes: Int, limits: ConnectionLimits, logger: Logger) {
        self.target = target
        self.me = me
        self.clusterID = clusterID
        self.store = store
        self.view = view
        self.maxBatchBytes = maxBatchBytes
        self.limits = limits
        var log = logger
        log[metadataKey: LogKey.peer.rawValue] = "\(target.id) \(target.address)"
        self.logger = log
    }

    /// Starts connecting; `replica` receives positions and acknowledgements. The link's tasks
    /// run on its connection's event loop, so an acknowledgement reaches the replica, and a
    /// queued batch the socket, without a thread hand-over.
    func start(replica: Replica) {
        let loop = FrameConnector.defaultGroup.next()
        let task = Task(executorPreference: EventLoopTaskExecutor(loop)) { await self.run(replica: replica, on: loop) }
        let closed = state.withLock { s in
            s.task = task
            return s.closed
        }
        if closed { task.cancel() }
    }

    /// Bytes of records queued for sending.
    var queuedBytes: Int { state.withLock { $0.queuedBytes } }

    /// Queues records (durable here) for the successor, in LSN order.
    func send(_ records: [EncodedRecord]) {
        enqueue(.records(records), bytes: records.reduce(0) { $0 + $1.count })
    }

    /// Queues a resend of the records after `after` through `through` (durable here) from the log.
    func resend(after: LSN, through: LSN) {
        enqueue(.fromLog(after: after, through: through), bytes: 0)
    }

    private func enqueue(_ work: Work, bytes: Int) {
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { s in
            guard !s.closed else { return nil }
            s.queue.append(work)
            s.queuedBytes += bytes
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume()
    }

    /// Drops everything queued: the successor reported its position on a new connection, and
    /// the replica resends what it lacks.
    func clearQueue() {
        state.withLock { s in
            s.queue = []
            s.queuedBytes = 0
        }
    }

    /// Stops the link.
    func close() {
        let (task, waiter): (Task<Void, Never>?, CheckedContinuation<Void, Never>?) = state.withLock { s in
            s.closed = true
            s.queue = []
            s.queuedBytes = 0
            defer { s.waiter = nil }
            return (s.task, s.waiter)
        }
        waiter?.resume()
        task?.cancel()
    }

    private var isClosed: Bool { state.withLock { $0.closed } }

    /// Resumes the send loop if it waits.
    private func wake() {
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { s in
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume()
    }

    // MARK: - Connection

    private func run(replica: Replica, on loop: any EventLoop) async {
        var backoff = Duration.milliseconds(20)
        while !Task.isCancelled && !isClosed {
            guard let address = try? Address(parsing: target.address) else {
                logger.error("successor address is not HOST:PORT; waiting for a new configuration")
                return
            }
            let hello = Hello(role: .node, clusterID: clusterID, senderID: me.rawValue)
            do throws(CatenaError) {
                try await FrameConnector.withConnection(to: address, hello: hello, limits: limits, group: loop) { (_, reader, outbound, _) async throws(CatenaError) -> Void in
                    guard let first = try await reader.next() else {
                        throw CatenaError(.unavailable, "\(target.id) closed the replication connection")
                    }
                    if first.type == .error { throw try ErrorPayload.decode(first.payload) }
                    guard first.type == .position else {
                        throw CatenaError(.protocolViolation, "\(target.id) opened replication with \(first.type), not position")
                    }
                    let position = try LSNPayload.decode(first.payload)
                    if let error = replica.successorReported(position, epoch: first.epoch, from: target.id, link: self) {
                        throw error
                    }
                    logger.debug("replication connected", metadata: .catena([.lsn: "\(position)"]))
                    let snapshot = view.snapshot
                    let readTarget = Frame(type: .readTarget, chainID: snapshot.configuration?.chainID ?? 0, epoch: snapshot.epoch,
                                       payload: LSNPayload.encode(replica.lastAccepted))
                    do {
                        try await outbound.write(readTarget)
                    } catch {
                        throw CatenaError(.unavailable, "connection lost: \(error)")
                    }
                    backoff = .milliseconds(20)
                    try await withSending(outbound) { () async throws(CatenaError) in
                        while let frame = try await reader.next() {
                            switch frame.type {
                            case .acknowledge:
                                let (lsn, held) = try AcknowledgePayload.decode(frame.payload)
                                if let error = replica.acknowledged(through: lsn, held: held, epoch: frame.epoch, from: target.id) { throw error }
                            case .position:
                                let lsn = try LSNPayload.decode(frame.payload)
                                if let error = replica.successorReported(lsn, epoch: frame.epoch, from: target.id, link: self) { throw error }
                            case .error:
                                throw try ErrorPayload.decode(frame.payload)
                            default:
                                throw CatenaError(.protocolViolation, "\(target.id) sent \(frame.type) on a replication connection")
                            }
                        }
                    }
                }
            } catch {
                if !isClosed {
                    logger.info("replication connection ended; reconnecting", metadata: .catena([.error: "\(error)"]))
                }
            }
            try? await Task.sleep(for: backoff)
            backoff = min(backoff * 2, .seconds(1))
        }
    }

    /// Runs `receive` while a child task sends queued and resent records; stops both when either ends.
    private func withSending(_ outbound: NIOAsyncChannelOutboundWriter<Frame>,
                             _ receive: () async throws(CatenaError) -> Void) async throws(CatenaError) {
        let result: Result<Void, CatenaError> = await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.sendLoop(outbound) }
            let r = await Result.catching(receive)
            group.cancelAll()
            return r
        }
        try result.get()
    }

    private func sendLoop(_ outbound: NIOAsyncChannelOutboundWriter<Frame>) async {
        do {
            while !Task.isCancelled {
                enum Next { case batch([EncodedRecord]), fromLog(LSN, LSN), wait, stop }
                let next: Next = state.withLock { s in
                    if s.closed { return .stop }
                    switch s.queue.first {
                    case nil:
                        return .wait
                    case .fromLog(let after, let through):
                        s.queue.removeFirst()
                        return .fromLog(after, through)
                    case .records:
                        // Records go out in frames of at most a batch's bytes, or one record alone
                        // (the head admits no record a frame cannot carry): consecutive work is
                        // joined, and work larger than a batch is split.
                        var batch: [EncodedRecord] = []
                        var bytes = 0
                        take: while case .records(var records)? = s.queue.first {
                            var taken = 0
                            for r in records {
                                if !batch.isEmpty && bytes + r.count > maxBatchBytes { break }
                                batch.append(r)
                                bytes += r.count
                                taken += 1
                            }
                            if taken < records.count {
                                records.removeFirst(taken)
                                s.queue[0] = .records(records)
                                break take
                            }
                            s.queue.removeFirst()
                        }
                        s.queuedBytes -= bytes
                        return .batch(batch)
                    }
                }
                switch next {
                case .stop:
                    return
                case .wait:
                    // Cancellable: when the connection's receive side ends, this loop must end too
                    // (or the link would never reconnect).
                    await withTaskCancellationHandler {
                        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                            let ready = state.withLock { s in
                                if s.closed || !s.queue.isEmpty || Task.isCancelled { return true }
                                s.waiter = c
                                return false
                            }
                            if ready { c.resume() }
                        }
                    } onCancel: {
                        wake()
                    }
                case .batch(let records):
                    try await send(records, outbound)
                case .fromLog(let after, let through):
                    try await resendFromLog(after: after, through: through, outbound)
                }
            }
        } catch {
            logger.debug("replication send stopped", metadata: .catena([.error: "\(error)"]))
        }
    }

    private func send(_ records: [EncodedRecord], _ outbound: NIOAsyncChannelOutboundWriter<Frame>) async throws {
        let snapshot = view.snapshot
        try await outbound.write(Frame(type: .replicate, chainID: snapshot.configuration?.chainID ?? 0, epoch: snapshot.epoch,
                                       payload: ReplicatePayload.encode(records)))
    }

    /// Streams the records after `after` through `through` (durable here) from the local log.
    private func resendFromLog(after: LSN, through: LSN, _ outbound: NIOAsyncChannelOutboundWriter<Frame>) async throws {
        var cursor = after
        logger.debug("resending from the log", metadata: .catena([.afterLSN: "\(after)", .throughLSN: "\(through)"]))
        while cursor.seq < through.seq {
            try Task.checkCancellation()
            var iterator = try store.records(after: cursor).makeAsyncIterator()
            var batch: [EncodedRecord] = []
            var bytes = 0
            while cursor.seq < through.seq, let r = try await iterator.nextRecord() {
                guard r.lsn.seq <= through.seq else { break }
                guard r.lsn.seq > cursor.seq else { continue }
                // A frame holds at most a batch's bytes, or one record alone (the head admits no
                // record a frame cannot carry): never a large record behind smaller ones.
                if !batch.isEmpty && bytes + r.count > maxBatchBytes {
                    try await send(batch, outbound)
                    batch = []
                    bytes = 0
                }
                batch.append(r)
                bytes += r.count
                cursor = r.lsn
            }
            if !batch.isEmpty { try await send(batch, outbound) }
            if cursor.seq < through.seq { try await Task.sleep(for: .milliseconds(2)) }
        }
    }
}

/// Sends acknowledgements to the predecessor over its connection's outlet, from whatever thread
/// the replica runs on, without a task of its own: only the latest acknowledgement matters, so
/// those that arrive before the connection's event loop gets to them go out as one frame
/// (``FrameOutlet/sendReplacing(_:)``).
final class AckSender: Sendable {
    private let outlet: FrameOutlet
    private let chainID: ChainID
    private let state = Mutex(State())

    private struct State: ~Copyable {
        var last: LSN?
        var held: [LSN] = []
        var closed = false
    }

    init(outlet: FrameOutlet, chainID: ChainID) {
        self.outlet = outlet
        self.chainID = chainID
    }

    /// Sends an acknowledgement of everything through `lsn` (none below one already sent), with
    /// how far this node and the members after it hold their logs (`held`).
    func send(_ lsn: LSN, held: [LSN] = [], epoch: UInt64) {
        let send: Bool = state.withLock { s in
            guard !s.closed else { return false }
            if let last = s.last, last.seq > lsn.seq || (last.seq == lsn.seq && held == s.held) { return false }
            s.last = lsn
            s.held = held
            return true
        }
        if send { outlet.sendReplacing(Frame(type: .acknowledge, chainID: chainID, epoch: epoch, payload: AcknowledgePayload.encode(lsn, held: held))) }
    }

    /// Stops the sender: later acknowledgements are dropped.
    func close() {
        state.withLock { $0.closed = true }
    }
}
