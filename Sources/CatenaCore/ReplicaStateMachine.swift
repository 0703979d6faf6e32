/// A write as a client asked for it, before the head decides anything about it.
public struct WriteRequest: Hashable, Sendable {
    /// The client's request id; a retry with the same id gets the original result.
    public var requestID: RequestID
    /// Put, delete, chunk or manifest.
    public var type: RecordType
    /// The object key.
    public var key: Key
    /// The value (empty for a delete).
    public var value: [UInt8]
    /// XXH3-64 of the object's content, computed by the client (end-to-end).
    public var contentChecksum: UInt64
    /// Content type, user metadata, chunk address.
    public var extensions: [RecordExtension]

    /// Creates a request; the content checksum defaults to XXH3-64 of `value`.
    public init(requestID: RequestID, type: RecordType, key: Key, value: [UInt8] = [],
                contentChecksum: UInt64? = nil, extensions: [RecordExtension] = []) {
        self.requestID = requestID
        self.type = type
        self.key = key
        self.value = value
        self.contentChecksum = contentChecksum ?? (type == .delete ? 0 : XXH3.hash(value))
        self.extensions = extensions
    }
}

/// The replica protocol of one node in one chain (van Renesse & Schneider): LSN assignment at
/// the head, in-order application and forwarding, the Sent list, acknowledgements flowing back
/// from the tail, commits at the head, fencing by epoch, backpressure, exactly-once retries.
///
/// A pure state machine: events in, ``Action``s out; no I/O, no clock reads (the head's clock
/// is passed in). One interpreter in the node performs the actions in order — in particular it
/// enqueues ``Action/append(_:)`` records in the local log before handling the next event, so
/// the log's order is the order of events.
///
/// Rules it keeps:
/// - a node acknowledges upstream only records that are durable locally and acknowledged
///   downstream (the tail: durable locally); the head reports a write committed only then;
/// - records are applied strictly in LSN order: duplicates are skipped, a gap is refused;
/// - messages from an older epoch are refused, so a deposed head never gets a write committed;
/// - the Sent list holds LSNs and sizes, not values: a resend re-reads the log;
/// - the head stops taking writes while more than ``Limits/maxInFlightBytes`` are
///   unacknowledged downstream, so a slow successor slows the head instead of filling memory.
public struct ReplicaStateMachine: Sendable {
    /// Bounds.
    public struct Limits: Hashable, Sendable {
        /// Bytes forwarded but not yet acknowledged, above which the head answers ``Action/busy(_:)``.
        public var maxInFlightBytes: Int = 64 << 20
        /// Committed request ids remembered for exactly-once retries.
        public var rememberedRequests: Int = 100_000

        /// The defaults above.
        public init() {}
    }

    /// A write that committed: every replica holds it.
    public struct Commit: Hashable, Sendable {
        /// The client's request.
        public var requestID: RequestID
        /// Where it is in the log.
        public var lsn: LSN

        /// Creates a commit.
        public init(requestID: RequestID, lsn: LSN) {
            self.requestID = requestID
            self.lsn = lsn
        }
    }

    /// What the node must do.
    public enum Action: Hashable, Sendable {
        /// Append these records to the local log, in order, before handling the next event.
        case append([EncodedRecord])
        /// Send these records to the successor.
        case forward([EncodedRecord], to: ChainMember)
        /// Read the records after `after` through `through` from the local log and send them to
        /// the successor (a new successor, after a reconfiguration).
        case resend(after: LSN, through: LSN, to: ChainMember)
        /// Tell the predecessor that every record through `through` is on this node and all after it.
        case acknowledge(through: LSN, to: ChainMember)
        /// The head: these writes committed; answer their clients.
        case committed([Commit])
        /// Refuse a client request (nil: a replication message) with this error.
        case refuse(RequestID?, CatenaError)
    }

    /// The node this machine runs on.
    public let me: NodeID
    /// The current configuration.
    public private(set) var configuration: ChainConfiguration
    /// Bounds.
    public let limits: Limits

    /// The LSN of the last record accepted into the local log (assigned at the head).
    public private(set) var lastAccepted: LSN
    /// The highest LSN durable in the local log.
    public private(set) var durable: LSN
    /// The highest LSN the successor acknowledged.
    public private(set) var downstreamAcknowledged: LSN
    /// The highest LSN this node acknowledged upstream (the head: committed).
    public private(set) var acknowledged: LSN

    /// Forwarded, not yet acknowledged: (LSN, size), in order. The Sent list.
    private var sent: [(lsn: LSN, bytes: Int)] = []
    private var sentHead = 0
    /// Bytes in `sent`.
    public private(set) var inFlightBytes = 0
    /// Head: writes not yet committed, in LSN order.
    private var pending: [Commit] = []
    private var pendingHead = 0
    /// Head: request id -> LSN, for writes pending or committed (bounded by `rememberedRequests`).
    private var requests: [RequestID: LSN] = [:]
    private var requestOrder: [RequestID] = []
    private var requestOrderHead = 0

    /// Creates the machine for `me` in `configuration`, whose local log ends at `lastLSN`
    /// (all of it durable).
    public init(me: NodeID, configuration: ChainConfiguration, lastLSN: LSN, limits: Limits = Limits()) {
        self.me = me
        self.configuration = configuration
        self.limits = limits
        self.lastAccepted = lastLSN
        self.durable = lastLSN
        self.downstreamAcknowledged = .zero
        self.acknowledged = .zero
    }

    /// This node's role, or nil if it is not a member of the current configuration.
    public var role: ChainRole? { configuration.role(of: me) }

    /// The number of records in the Sent list.
    public var sentCount: Int { sent.count - sentHead }

    // MARK: - Events

    /// A client write arrives (at the head). `now`: the head's wall clock, ns since 1970.
    public mutating func write(_ request: WriteRequest, now: UInt64) -> [Action] {
        guard let role, role.takesWrites else {
            let head = configuration.head.map { "\($0.id) at \($0.address)" } ?? "no node"
            return [.refuse(request.requestID, CatenaError(.redirect, "writes go to the head: \(head)"))]
        }
        if let lsn = requests[request.requestID] {
            // A retry: the original result, or nothing new while it is still in flight.
            return lsn <= acknowledged ? [.committed([Commit(requestID: request.requestID, lsn: lsn)])] : []
        }
        let lsn = LSN(epoch: configuration.epoch, seq: lastAccepted.seq + 1)
        let record: EncodedRecord
        do {
            record = try Record(
                type: request.type, chainID: configuration.chainID, key: request.key, lsn: lsn, timestamp: now,
                requestID: request.requestID, contentChecksum: request.contentChecksum,
                extensions: request.extensions, value: request.value
            ).encoded()
        } catch {
            return [.refuse(request.requestID, error)]
        }
        if sentCount > 0 && inFlightBytes + record.count > limits.maxInFlightBytes {
            return [.refuse(request.requestID, CatenaError(.busy, "\(inFlightBytes) bytes are in flight down the chain; retry shortly"))]
        }
        lastAccepted = lsn
        pending.append(Commit(requestID: request.requestID, lsn: lsn))
        remember(request.requestID, lsn)
        var actions: [Action] = [.append([record])]
        if let next = configuration.successor(of: me) {
            send([record])
            actions.append(.forward([record], to: next))
        }
        return actions
    }

    /// Records arrive from the predecessor, sent under `epoch`.
    public mutating func replicate(_ records: [EncodedRecord], epoch: UInt64) -> [Action] {
        if let refusal = fence(epoch) { return [refusal] }
        guard let role, !role.takesWrites else {
            return [.refuse(nil, CatenaError(.protocolViolation, "\(me) is the head of epoch \(configuration.epoch); it takes no replication"))]
        }
        var accepted: [EncodedRecord] = []
        var actions: [Action] = []
        for r in records {
            if r.lsn.seq <= lastAccepted.seq { continue }  // a duplicate (e.g. a resend)
            guard r.lsn.seq == lastAccepted.seq + 1, r.lsn.epoch >= lastAccepted.epoch else {
                actions.append(.refuse(nil, CatenaError(.lsnOutOfOrder, "record \(r.lsn) does not follow \(lastAccepted); resend after \(lastAccepted)")))
                break
            }
            accepted.append(r)
            lastAccepted = r.lsn
        }
        if accepted.isEmpty {
            // Only duplicates: say again what is acknowledged, so a resending predecessor moves on.
            if records.contains(where: { $0.lsn.seq <= acknowledged.seq }), acknowledged != .zero,
               let previous = configuration.predecessor(of: me) {
                actions.insert(.acknowledge(through: acknowledged, to: previous), at: 0)
            }
            return actions
        }
        var result: [Action] = [.append(accepted)]
        if let next = configuration.successor(of: me) {
            send(accepted)
            result.append(.forward(accepted, to: next))
        }
        return result + actions
    }

    /// The local log made everything through `lsn` durable.
    public mutating func durable(through lsn: LSN) -> [Action] {
        guard lsn.seq > durable.seq else { return [] }
        durable = lsn
        return progress()
    }

    /// The successor acknowledged everything through `lsn`, under `epoch`.
    public mutating func acknowledged(through lsn: LSN, epoch: UInt64) -> [Action] {
        if let refusal = fence(epoch) { return [refusal] }
        guard lsn.seq > downstreamAcknowledged.seq else { return [] }
        downstreamAcknowledged = lsn
        while sentHead < sent.count, sent[sentHead].lsn.seq <= lsn.seq {
            inFlightBytes -= sent[sentHead].bytes
            sentHead += 1
        }
        if sentHead > 1024 && sentHead * 2 > sent.count {
            sent.removeFirst(sentHead)
            sentHead = 0
        }
        return progress()
    }

    /// A new configuration (newer epoch) arrives from the master.
    ///
    /// A node that became tail acknowledges what it holds; a node whose successor changed waits
    /// for the new successor to report its last LSN (``successorReported(lastLSN:epoch:)``),
    /// then resends the rest from its log.
    public mutating func reconfigure(_ new: ChainConfiguration) -> [Action] {
        guard new.epoch > configuration.epoch else { return [] }
        let oldSuccessor = configuration.successor(of: me)?.id
        configuration = new
        if configuration.successor(of: me)?.id != oldSuccessor {
            // The new successor's position is unknown until it reports; it has acknowledged nothing.
            downstreamAcknowledged = .zero
        }
        return progress()
    }

    /// The (new) successor reports the last LSN in its log, under `epoch`: resend what follows.
    public mutating func successorReported(lastLSN: LSN, epoch: UInt64) -> [Action] {
        if let refusal = fence(epoch) { return [refusal] }
        guard let next = configuration.successor(of: me), lastLSN.seq < lastAccepted.seq else { return [] }
        return [.resend(after: lastLSN, through: lastAccepted, to: next)]
    }

    // MARK: - Internals

    /// Refuses messages from another epoch.
    private func fence(_ epoch: UInt64) -> Action? {
        if epoch < configuration.epoch {
            return .refuse(nil, CatenaError(.staleEpoch, "message from epoch \(epoch); \(me) is at epoch \(configuration.epoch)"))
        }
        if epoch > configuration.epoch {
            return .refuse(nil, CatenaError(.epochAhead, "message from epoch \(epoch); \(me) is still at epoch \(configuration.epoch)"))
        }
        return nil
    }

    private mutating func send(_ records: [EncodedRecord]) {
        for r in records {
            sent.append((r.lsn, r.count))
            inFlightBytes += r.count
        }
    }

    /// Acknowledge (or commit) whatever became durable here and acknowledged downstream.
    private mutating func progress() -> [Action] {
        guard let role else { return [] }
        let downstream = configuration.successor(of: me) == nil ? durable : downstreamAcknowledged
        let ackable = durable.seq <= downstream.seq ? durable : downstream
        guard ackable.seq > acknowledged.seq else { return [] }
        acknowledged = ackable
        var actions: [Action] = []
        if let previous = configuration.predecessor(of: me) {
            actions.append(.acknowledge(through: ackable, to: previous))
        }
        if role.takesWrites {
            var done: [Commit] = []
            while pendingHead < pending.count, pending[pendingHead].lsn.seq <= ackable.seq {
                done.append(pending[pendingHead])
                pendingHead += 1
            }
            if pendingHead > 1024 && pendingHead * 2 > pending.count {
                pending.removeFirst(pendingHead)
                pendingHead = 0
            }
            if !done.isEmpty { actions.append(.committed(done)) }
        }
        return actions
    }

    private mutating func remember(_ id: RequestID, _ lsn: LSN) {
        requests[id] = lsn
        requestOrder.append(id)
        var budget = requestOrder.count - requestOrderHead
        while requestOrder.count - requestOrderHead > limits.rememberedRequests && budget > 0 {
            budget -= 1
            let old = requestOrder[requestOrderHead]
            requestOrderHead += 1
            // Never forget a request that is still pending: move it to the back.
            if let l = requests[old], l.seq > acknowledged.seq {
                requestOrder.append(old)
            } else {
                requests[old] = nil
            }
        }
        if requestOrderHead > 4096 && requestOrderHead * 2 > requestOrder.count {
            requestOrder.removeFirst(requestOrderHead)
            requestOrderHead = 0
        }
    }
}
