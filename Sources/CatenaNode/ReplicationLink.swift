import CatenaCore
import CatenaNetwork
import CatenaStorage
import CatenaWire
import Logging
import NIOCore
import Synchronization

/// The replication connection from this node to its successor.
///
/// Records to forward wait in an in-memory queue (bounded, chain-wide, by the head's
/// uncommitted-bytes limit). On every (re)connection the successor first reports the last LSN it
/// holds; the replica drops what it has from the queue and, if it lacks records already sent
/// (or lost with a broken connection), asks for a resend: the link then streams those records
/// from the local log — the Sent list holds LSNs, not values — before continuing with the queue.
/// Acknowledgements coming back are handed to the replica.
///
/// A record is sent only once it is durable in the local log, so every node's durable log
/// contains its successor's: a node that crashes and restarts never finds its successor ahead of
/// it, and a restarted head can never hand out an LSN its successor already holds. The cost is
/// one local fsync of latency per hop (throughput is unchanged: group commit keeps the pipeline
/// full).
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

    private struct State: ~Copyable {
        var queue: [EncodedRecord] = []
        var queueHead = 0
        var queuedBytes = 0
        var resend: (after: LSN, through: LSN)?
        /// Records are sent only once durable here (see the type's documentation).
        var durableSeq: UInt64 = 0
        var waiter: CheckedContinuation<Void, Never>?
        var closed = false
        var task: Task<Void, Never>?
    }

    init(target: ChainMember, me: NodeID, clusterID: String, store: Store, view: ReplicaView,
         maxBatchBytes: Int, limits: ConnectionLimits, durable: LSN, logger: Logger) {
        self.target = target
        state.withLock { $0.durableSeq = durable.seq }
        self.me = me
        self.clusterID = clusterID
        self.store = store
        self.view = view
        self.maxBatchBytes = maxBatchBytes
        self.limits = limits
        var log = logger
        log[metadataKey: LogKey.peer] = "\(target.id) \(target.address)"
        self.logger = log
    }

    /// Starts connecting; `replica` receives positions and acknowledgements.
    func start(replica: Replica) {
        let task = Task { await self.run(replica: replica) }
        let closed = state.withLock { s in
            s.task = task
            return s.closed
        }
        if closed { task.cancel() }
    }

    /// Bytes queued for sending.
    var queuedBytes: Int { state.withLock { $0.queuedBytes } }

    /// Queues records for the successor, in LSN order.
    func forward(_ records: [EncodedRecord]) {
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { s in
            guard !s.closed else { return nil }
            s.queue.append(contentsOf: records)
            s.queuedBytes += records.reduce(0) { $0 + $1.count }
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume()
    }

    /// Everything through `lsn` is durable in the local log: it may be sent.
    func durable(through lsn: LSN) {
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { s in
            guard lsn.seq > s.durableSeq else { return nil }
            s.durableSeq = lsn.seq
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume()
    }

    /// Forgets queued records the successor already holds.
    func dropQueued(through seq: UInt64) {
        state.withLock { s in
            while s.queueHead < s.queue.count, s.queue[s.queueHead].lsn.seq <= seq {
                s.queuedBytes -= s.queue[s.queueHead].count
                s.queueHead += 1
            }
        }
    }

    /// Sends the records after `after` through `through` from the local log before the queue.
    func resend(after: LSN, through: LSN) {
        dropQueued(through: through.seq)
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { s in
            s.resend = (after, through)
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume()
    }

    /// Stops the link.
    func close() {
        let (task, waiter): (Task<Void, Never>?, CheckedContinuation<Void, Never>?) = state.withLock { s in
            s.closed = true
            s.queue = []
            s.queueHead = 0
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

    private func run(replica: Replica) async {
        var backoff = Duration.milliseconds(20)
        while !Task.isCancelled && !isClosed {
            guard let address = try? Address(parsing: target.address) else {
                logger.error("successor address is not HOST:PORT; waiting for a new configuration")
                return
            }
            let hello = Hello(role: .node, clusterID: clusterID, senderID: me.rawValue)
            do throws(CatenaError) {
                try await FrameConnector.withConnection(to: address, hello: hello, limits: limits) { (_, reader, outbound) async throws(CatenaError) -> Void in
                    guard let first = try await reader.next() else {
                        throw CatenaError(.unavailable, "\(target.id) closed the replication connection")
                    }
                    if first.type == .error { throw try ErrorPayload.decode(first.payload) }
                    guard first.type == .position else {
                        throw CatenaError(.protocolViolation, "\(target.id) opened replication with \(first.type), not position")
                    }
                    let position = try LSNPayload.decode(first.payload)
                    if let error = await replica.successorReported(position, epoch: first.epoch, from: target.id, link: self) {
                        throw error
                    }
                    logger.debug("replication connected", metadata: [LogKey.lsn: "\(position)"])
                    let snapshot = view.snapshot
                    let readTarget = Frame(type: .readTarget, chainID: snapshot.configuration?.chainID ?? 0, epoch: snapshot.epoch,
                                       payload: LSNPayload.encode(await replica.lastAccepted))
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
                                let lsn = try LSNPayload.decode(frame.payload)
                                if let error = await replica.acknowledged(through: lsn, epoch: frame.epoch, from: target.id) { throw error }
                            case .position:
                                let lsn = try LSNPayload.decode(frame.payload)
                                if let error = await replica.successorReported(lsn, epoch: frame.epoch, from: target.id, link: self) { throw error }
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
                    logger.info("replication connection ended; reconnecting", metadata: ["error": "\(error)"])
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
                enum Work { case resend(LSN, LSN), batch([EncodedRecord]), wait, stop }
                let work: Work = state.withLock { s in
                    if s.closed { return .stop }
                    if let r = s.resend { return .resend(r.after, r.through) }
                    guard s.queueHead < s.queue.count, s.queue[s.queueHead].lsn.seq <= s.durableSeq else { return .wait }
                    var batch: [EncodedRecord] = []
                    var bytes = 0
                    while s.queueHead < s.queue.count, s.queue[s.queueHead].lsn.seq <= s.durableSeq,
                          bytes == 0 || bytes + s.queue[s.queueHead].count <= maxBatchBytes {
                        let r = s.queue[s.queueHead]
                        batch.append(r)
                        bytes += r.count
                        s.queueHead += 1
                    }
                    s.queuedBytes -= bytes
                    if s.queueHead == s.queue.count {
                        s.queue.removeAll(keepingCapacity: s.queue.count < 4096)
                        s.queueHead = 0
                    } else if s.queueHead > 4096 {
                        s.queue.removeFirst(s.queueHead)
                        s.queueHead = 0
                    }
                    return .batch(batch)
                }
                switch work {
                case .stop:
                    return
                case .wait:
                    // Cancellable: when the connection's receive side ends, this loop must end too
                    // (or the link would never reconnect).
                    await withTaskCancellationHandler {
                        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                            let ready = state.withLock { s in
                                let sendable = s.queueHead < s.queue.count && s.queue[s.queueHead].lsn.seq <= s.durableSeq
                                if s.closed || s.resend != nil || sendable || Task.isCancelled { return true }
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
                case .resend(let after, let through):
                    try await resendFromLog(after: after, through: through, outbound)
                    state.withLock { s in
                        if let r = s.resend, r.after == after, r.through == through { s.resend = nil }
                    }
                }
            }
        } catch {
            logger.debug("replication send stopped", metadata: ["error": "\(error)"])
        }
    }

    private func send(_ records: [EncodedRecord], _ outbound: NIOAsyncChannelOutboundWriter<Frame>) async throws {
        let snapshot = view.snapshot
        try await outbound.write(Frame(type: .replicate, chainID: snapshot.configuration?.chainID ?? 0, epoch: snapshot.epoch,
                                       payload: ReplicatePayload.encode(records)))
    }

    /// Streams the records after `after` through `through` from the local log. Records not yet
    /// durable here are waited for.
    private func resendFromLog(after: LSN, through: LSN, _ outbound: NIOAsyncChannelOutboundWriter<Frame>) async throws {
        var cursor = after
        logger.debug("resending from the log", metadata: ["after": "\(after)", "through": "\(through)"])
        while cursor.seq < through.seq {
            try Task.checkCancellation()
            let limit = min(through.seq, state.withLock { $0.durableSeq })
            var iterator = try store.records(after: cursor).makeAsyncIterator()
            var batch: [EncodedRecord] = []
            var bytes = 0
            while cursor.seq < limit, let r = try await iterator.nextRecord() {
                guard r.lsn.seq <= limit else { break }
                guard r.lsn.seq > cursor.seq else { continue }
                batch.append(r)
                bytes += r.count
                cursor = r.lsn
                if bytes >= maxBatchBytes {
                    try await send(batch, outbound)
                    batch = []
                    bytes = 0
                }
            }
            if !batch.isEmpty { try await send(batch, outbound) }
            if cursor.seq < through.seq { try await Task.sleep(for: .milliseconds(2)) }
        }
    }
}

/// Sends acknowledgements to the predecessor over its connection, coalescing: only the latest
/// acknowledgement matters, so a burst becomes one frame.
final class AckSender: Sendable {
    private let state = Mutex(State())

    private struct State: ~Copyable {
        var pending: (lsn: LSN, epoch: UInt64)?
        var waiter: CheckedContinuation<Void, Never>?
        var closed = false
    }

    init() {}

    /// Queues an acknowledgement of everything through `lsn`.
    func send(_ lsn: LSN, epoch: UInt64) {
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { s in
            guard !s.closed else { return nil }
            if let p = s.pending, p.lsn.seq > lsn.seq { return nil }
            s.pending = (lsn, epoch)
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume()
    }

    /// Stops the sender; ``run(_:chainID:)`` returns.
    func close() {
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { s in
            s.closed = true
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume()
    }

    /// Writes acknowledgements to `outbound` until closed or the connection fails.
    func run(_ outbound: NIOAsyncChannelOutboundWriter<Frame>, chainID: ChainID) async {
        while true {
            let next: (lsn: LSN, epoch: UInt64)?? = state.withLock { s in
                if s.closed { return .some(nil) }
                defer { s.pending = nil }
                return s.pending.map { .some($0) } ?? nil
            }
            switch next {
            case .some(.none):
                return
            case .some(.some(let ack)):
                do {
                    try await outbound.write(Frame(type: .acknowledge, chainID: chainID, epoch: ack.epoch, payload: LSNPayload.encode(ack.lsn)))
                } catch {
                    return
                }
            case .none:
                await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                    let ready = state.withLock { s in
                        if s.closed || s.pending != nil { return true }
                        s.waiter = c
                        return false
                    }
                    if ready { c.resume() }
                }
            }
        }
    }
}
