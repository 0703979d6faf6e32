import DequeModule

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
    /// What the key's newest version must be for the write to apply (nil: unconditional).
    /// The head checks it and does not store it.
    public var condition: WriteCondition?
    /// When the head answers the write (``AckMode``); records do not carry it.
    public var ack: AckMode

    /// Creates a request; the content checksum defaults to XXH3-64 of `value`.
    public init(requestID: RequestID, type: RecordType, key: Key, value: [UInt8] = [],
                contentChecksum: UInt64? = nil, extensions: [RecordExtension] = [], condition: WriteCondition? = nil,
                ack: AckMode = .all) {
        self.ack = ack
        self.requestID = requestID
        self.type = type
        self.key = key
        self.value = value
        self.contentChecksum = contentChecksum ?? (type == .delete ? 0 : XXH3.hash(value))
        self.extensions = extensions
        self.condition = condition
    }

    /// A settlement of the write `requestID` of `key` (``RecordType/fence``): its value is the
    /// write's send time (u64, ns since 1970 by the client's clock; 0: unknown), which the head
    /// reads and does not store.
    public static func fence(requestID: RequestID, key: Key, sentAt: UInt64) -> WriteRequest {
        var w = ByteWriter(capacity: 8)
        w.u64(sentAt)
        return WriteRequest(requestID: requestID, type: .fence, key: key, value: w.bytes)
    }

    /// A fence's send time (0 if it carries none), or nil if the value is not one.
    var fenceSentAt: UInt64? {
        guard value.count == 8 else { return value.isEmpty ? 0 : nil }
        var r = ByteReader(value)
        return r.u64()
    }
}

/// The replica protocol of one node in one chain (van Renesse & Schneider): LSN assignment at
/// the head, in-order application and forwarding, the Sent list, acknowledgements flowing back
/// from the tail, commits at the head, fencing by epoch, exactly-once retries.
///
/// A pure state machine: events in, ``Action``s out; no I/O, no clock reads (the head's clock
/// is passed in). One interpreter in the node performs the actions in order — in particular it
/// enqueues ``Action/append(_:)`` records in the local log before handling the next event, so
/// the log's order is the order of events. It runs inside ``NodeStateMachine``, which adds the
/// node's rules around it (leases, rejoining, admission, fail-stop).
///
/// Rules it keeps:
/// - a record is forwarded to the successor only once it is durable in the local log, so every
///   node's durable log contains its successor's across any crash (a restarted head can never
///   hand out an LSN its successor already holds);
/// - a node acknowledges upstream only records that are durable locally and acknowledged
///   downstream (the tail: durable locally); the head reports a write committed only then;
/// - with the acknowledgement, each node tells its predecessor how far it and every member
///   after it hold their logs durably, so the head can answer a write in a weaker
///   ``AckMode`` once the first k members (or the head alone) hold it — the write is
///   replicated and committed exactly as any other;
/// - records are applied strictly in LSN order: duplicates are skipped, a gap is refused;
/// - messages from an older epoch are refused, so a deposed head never gets a write committed;
/// - the Sent list holds LSNs and sizes, not values: a resend re-reads the log.
public struct ReplicaStateMachine: Sendable {
    /// Bounds.
    public struct Limits: Hashable, Sendable {
        /// How long a committed write's request id is remembered for exactly-once retries, in
        /// nanoseconds of head timestamps before the newest record's: the store's request-id
        /// window (``RememberedRequest``), so a retry within it gets the original result
        /// whatever happened in between. Default 60 s.
        public var requestWindow: UInt64 = 60_000_000_000
        /// Committed request ids always remembered, whatever their age.
        public var rememberedRequests: Int = 100_000
        /// The most request ids remembered, window or not: a memory bound (about 100 bytes
        /// each). Beyond it the oldest committed ones are forgotten early, and counted.
        public var maxRememberedRequests: Int = 4_000_000
        /// How far a client's clock may be ahead of the head's when it settles a write (its
        /// send time against the head's timestamps). Default 5 s.
        public var settlementClockSkew: UInt64 = 5_000_000_000

        /// The defaults above.
        public init() {}
    }

    /// A write in the local log, for exactly-once retries: its request id, LSN and head timestamp.
    public struct RememberedRequest: Hashable, Sendable {
        /// The client's request.
        public var requestID: RequestID
        /// Where it is in the log.
        public var lsn: LSN
        /// The head's timestamp of the write (ns since 1970).
        public var timestamp: UInt64
        /// The record is a fence: the request was settled as not applied.
        public var fence: Bool

        /// Creates an entry.
        public init(requestID: RequestID, lsn: LSN, timestamp: UInt64 = 0, fence: Bool = false) {
            self.requestID = requestID
            self.lsn = lsn
            self.timestamp = timestamp
            self.fence = fence
        }
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
        /// Send these records (durable here) to the successor.
        case forward([EncodedRecord], to: ChainMember)
        /// Read the records after `after` through `through` (durable here) from the local log and
        /// send them to the successor, before anything forwarded later.
        case resend(after: LSN, through: LSN, to: ChainMember)
        /// Tell the predecessor that every record through `through` is on this node and all after
        /// it, and how far this node and each member after it hold their logs durably
        /// (`held[0]`: this node).
        case acknowledge(through: LSN, held: [LSN], to: ChainMember)
        /// The head: these writes committed; answer their clients.
        case committed([Commit])
        /// The head: these writes are held by as many members as their ``AckMode`` asks, and
        /// not yet committed; answer their clients (they are still replicated and committed
        /// as every write, and reported again in ``committed(_:)``, where an answered client
        /// is no longer waiting).
        case held([Commit])
        /// Refuse a client request (nil: a replication message) with this error.
        case refuse(RequestID?, CatenaError)
    }

    /// A write taken at the head and not yet committed.
    private struct Pending: Sendable {
        var requestID: RequestID
        var lsn: LSN
        var bytes: Int
        /// A fence: once committed its request is answered `notApplied`.
        var fence = false
    }

    /// A write taken at the head in a weaker ``AckMode`` than `all`, not yet answered.
    private struct Weak: Sendable {
        var requestID: RequestID
        var lsn: LSN
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
    /// The highest LSN this node acknowledged upstream (the head: committed). Every record
    /// through it is on every replica: the commit watermark.
    public private(set) var acknowledged: LSN
    /// How far each member after this one holds its log durably, as the successor last said
    /// (`[0]`: the successor), in this configuration.
    public private(set) var downstreamHeld: [LSN] = []
    /// The `held` list last sent upstream.
    private var heldSent: [LSN] = []
    /// Head: writes in a weaker ``AckMode`` not yet answered, by how many members must hold
    /// them, each in LSN order.
    private var weak: [Int: Deque<Weak>] = [:]
    /// The epochs of the local log: where each begins (first seq), oldest first. Known from
    /// the LSN the machine started at onwards; used to tell a duplicate from a divergent record.
    private var epochStarts: [(epoch: UInt64, firstSeq: UInt64)]
    /// Accepted, not yet durable, in LSN order: forwarded once durable.
    private var undurable = Deque<EncodedRecord>()
    /// Forwarded, not yet acknowledged: (LSN, size), in order. The Sent list.
    private var sent = Deque<(lsn: LSN, bytes: Int)>()
    /// Bytes in `sent`.
    public private(set) var inFlightBytes = 0
    /// Head: writes not yet committed, in LSN order.
    private var pending = Deque<Pending>()
    /// Bytes of the head's writes not yet committed (those taken since it became head; writes
    /// it inherited from its log count as 0).
    public private(set) var uncommittedBytes = 0
    /// Request id -> LSN of recent writes in the local log (head and followers alike, so a new
    /// head still answers retries exactly once). Bounded: committed ids beyond
    /// ``Limits/rememberedRequests`` are forgotten, oldest first.
    private var requests: [RequestID: LSN] = [:]
    private var requestOrder = Deque<RememberedRequest>()
    /// The remembered request ids whose record is a fence (settled as not applied).
    private var fences: Set<RequestID> = []
    /// Head timestamps before this may belong to request ids this machine no longer knows
    /// (forgotten, or not loaded at start): a write sent before it cannot be settled here.
    /// `UInt64.max`: everything before the next record this machine accepts.
    public private(set) var forgottenBefore: UInt64 = 0
    /// Head: conditional writes refused on a version that was not yet committed, answered once
    /// everything through `through` is (in order of `through`).
    private var heldRefusals = Deque<(requestID: RequestID, error: CatenaError, through: LSN)>()
    /// The newest head timestamp in the local log: the request window ends here.
    private var newestTimestamp: UInt64 = 0
    /// Request ids forgotten inside the window because of ``Limits/maxRememberedRequests``.
    public private(set) var requestsForgottenEarly = 0

    /// Creates the machine for `me` in `configuration`, whose local log ends at `lastLSN`
    /// (all of it durable, and already truncated to what the chain shares: a rejoining node
    /// truncates first and then builds a fresh machine).
    ///
    /// `recentRequests` are the request ids of the log's records within the request window, in
    /// LSN order, so a restarted node still answers retries exactly once: a head treats those
    /// not yet known to be committed as pending (answered when the acknowledgement arrives). A
    /// node without a successor (tail or single) holds everything in its durable log committed.
    public init(me: NodeID, configuration: ChainConfiguration, lastLSN: LSN, recentRequests: [RememberedRequest] = [],
                limits: Limits = Limits()) {
        self.me = me
        self.configuration = configuration
        self.limits = limits
        self.lastAccepted = lastLSN
        self.durable = lastLSN
        self.downstreamAcknowledged = .zero
        self.acknowledged = configuration.role(of: me) != nil && configuration.successor(of: me) == nil ? lastLSN : .zero
        self.epochStarts = lastLSN == .zero ? [] : [(lastLSN.epoch, lastLSN.seq)]
        for r in recentRequests where r.requestID != .none && r.lsn.seq <= lastLSN.seq {
            remember(r.requestID, r.lsn, timestamp: r.timestamp, fence: r.fence)
        }
        // The ids of a log read from its start are all known; of a longer one, those from the
        // oldest loaded on (the store loads every id of the window, which ends at the log's end).
        if lastLSN != .zero && recentRequests.first?.lsn.seq != 1 {
            forgottenBefore = recentRequests.map(\.timestamp).min() ?? .max
        }
        if role?.takesWrites == true { takeOverPending() }
    }

    /// This node's role, or nil if it is not a member of the current configuration.
    public var role: ChainRole? { configuration.role(of: me) }

    /// The number of records in the Sent list.
    public var sentCount: Int { sent.count }

    /// The number of writes the head is waiting to commit.
    public var pendingCount: Int { pending.count }

    // MARK: - Events

    /// A client write arrives (at the head). `now`: the head's wall clock, ns since 1970.
    /// `admit` sees the record before it is accepted and may refuse it (the local log's own
    /// checks, e.g. value size or an incomplete upload), so a record the log would refuse never
    /// gets an LSN.
    ///
    /// A write with a ``WriteRequest/condition`` is checked against the key's newest version in
    /// the local log: the newest record of the key this machine accepted and the log has not yet
    /// made durable, else `durableVersion(key)` — the local log's durable view (nil: absent;
    /// the default is an empty log). Together they are every record the head accepted, so the
    /// check sees the versions in flight as well as the committed ones.
    public mutating func write(_ request: WriteRequest, now: UInt64,
                               durableVersion: (Key) throws(CatenaError) -> KeyVersion? = { _ in nil },
                               admit: (EncodedRecord) throws(CatenaError) -> Void = { _ in }) -> [Action] {
        guard let role, role.takesWrites else {
            let head = configuration.head.map { "\($0.id) at \($0.address)" } ?? "no node"
            return [.refuse(request.requestID, CatenaError(.redirect, "writes go to the head: \(head)"))]
        }
        if request.requestID != .none, let lsn = requests[request.requestID] {
            if fences.contains(request.requestID) {
                // Settled as not applied: a late copy of the write is refused; a repeated
                // settlement gets the same answer once the fence committed.
                guard request.type == .fence else { return [.refuse(request.requestID, Self.notApplied(request.requestID, lsn))] }
                return lsn.seq <= acknowledged.seq ? [.refuse(request.requestID, Self.notApplied(request.requestID, lsn))] : []
            }
            // A retry (or a settlement of a write that was taken): the original result, or
            // nothing new while it is still in flight.
            if lsn.seq > acknowledged.seq && request.type == .fence {
                // A settlement asks whether the write applied for good: it is answered once the
                // write commits, not when a weaker mode holds it — and so is the write itself,
                // since interpreters answer every waiter of a request id at once.
                dropWeak(request.requestID)
            }
            return lsn.seq <= acknowledged.seq ? [.committed([Commit(requestID: request.requestID, lsn: lsn)])] : []
        }
        var request = request
        if request.type == .fence {
            guard let sentAt = request.fenceSentAt, request.condition == nil, request.extensions.isEmpty else {
                return [.refuse(request.requestID, CatenaError(.invalidArgument, "a fence carries its write's send time (8 bytes) or nothing, and no condition or fields"))]
            }
            // The write's record, if any, has a head timestamp no earlier than its send time,
            // less the clock skew: if ids that recent may be forgotten here, "not taken" cannot
            // be told from "forgotten".
            if forgottenBefore > 0 && (sentAt < limits.settlementClockSkew || sentAt - limits.settlementClockSkew < forgottenBefore) {
                return [.refuse(request.requestID, CatenaError(.settlementExpired, "request \(request.requestID) was sent before the oldest writes \(me) still remembers; whether it applied can no longer be told", requestID: request.requestID))]
            }
            request.value = []
        }
        let lsn = LSN(epoch: configuration.epoch, seq: lastAccepted.seq + 1)
        let record: EncodedRecord
        do throws(CatenaError) {
            if let condition = request.condition {
                try WriteCondition.check(condition, on: request.type, key: request.key)
                let current = try newestVersion(of: request.key, durableVersion: durableVersion)
                guard condition.holds(for: current) else {
                    let found = current.map { "is at \($0)" } ?? "has no object"
                    throw CatenaError(.preconditionFailed, "'\(request.key)' \(found); the write required \(condition)")
                }
            }
            record = try Record(
                type: request.type, chainID: configuration.chainID, key: request.key, lsn: lsn, timestamp: now,
                requestID: request.requestID, contentChecksum: request.contentChecksum,
                extensions: request.extensions, value: request.value
            ).encoded()
            try admit(record)
        } catch {
            if error.code == .preconditionFailed, lastAccepted.seq > acknowledged.seq {
                // The version the condition failed on may not be committed yet, and may never
                // be (the head can fail before it is replicated): the refusal would then have
                // read a write that never happened. It waits until everything this head took
                // before it is committed.
                heldRefusals.append((request.requestID, error, lastAccepted))
                return []
            }
            return [.refuse(request.requestID, error)]
        }
        accept(record)
        pending.append(Pending(requestID: request.requestID, lsn: lsn, bytes: record.count, fence: request.type == .fence))
        uncommittedBytes += record.count
        if let k = request.ack.members, request.type != .fence, request.requestID != .none {
            weak[k, default: []].append(Weak(requestID: request.requestID, lsn: lsn))
        }
        return [.append([record])]
    }

    /// Records arrive from the predecessor, sent under `epoch`.
    public mutating func replicate(_ records: [EncodedRecord], epoch: UInt64) -> [Action] {
        if let refusal = fence(epoch) { return [refusal] }
        guard let role else {
            return [.refuse(nil, CatenaError(.protocolViolation, "\(me) is not a member of epoch \(configuration.epoch)"))]
        }
        guard !role.takesWrites else {
            return [.refuse(nil, CatenaError(.protocolViolation, "\(me) is the head of epoch \(configuration.epoch); it takes no replication"))]
        }
        var accepted: [EncodedRecord] = []
        var actions: [Action] = []
        for r in records {
            guard r.lsn.epoch <= epoch, r.header.chainID == configuration.chainID else {
                actions.append(.refuse(nil, CatenaError(.protocolViolation, "record \(r.lsn) of chain \(r.header.chainID) does not belong in chain \(configuration.chainID) at epoch \(epoch)")))
                break
            }
            if r.lsn.seq <= lastAccepted.seq {
                // A duplicate (e.g. a resend) only if it is the same record as ours.
                if let mine = epochOf(seq: r.lsn.seq), mine != r.lsn.epoch {
                    actions.append(.refuse(nil, CatenaError(.lsnOutOfOrder, "record \(r.lsn) diverges from this log, which has seq \(r.lsn.seq) in epoch \(mine); the node must truncate and rejoin")))
                    break
                }
                continue
            }
            guard r.lsn.seq == lastAccepted.seq + 1, r.lsn.epoch >= lastAccepted.epoch else {
                actions.append(.refuse(nil, CatenaError(.lsnOutOfOrder, "record \(r.lsn) does not follow \(lastAccepted); resend after \(lastAccepted)")))
                break
            }
            accept(r)
            accepted.append(r)
        }
        if accepted.isEmpty {
            // Only duplicates: say again what is acknowledged, so a resending predecessor moves on.
            if actions.isEmpty, acknowledged != .zero, let previous = configuration.predecessor(of: me) {
                heldSent = held
                actions.insert(.acknowledge(through: acknowledged, held: held, to: previous), at: 0)
            }
            return actions
        }
        return [.append(accepted)] + actions
    }

    /// The local log made everything through `lsn` durable: forward it, and acknowledge or
    /// commit what is now durable here and downstream.
    public mutating func durable(through lsn: LSN) -> [Action] {
        guard lsn.seq > durable.seq, lsn.seq <= lastAccepted.seq else { return [] }
        durable = lsn
        var actions: [Action] = []
        var ready: [EncodedRecord] = []
        while let first = undurable.first, first.lsn.seq <= lsn.seq {
            ready.append(undurable.removeFirst())
        }
        if !ready.isEmpty, let next = configuration.successor(of: me) {
            for r in ready {
                sent.append((r.lsn, r.count))
                inFlightBytes += r.count
            }
            actions.append(.forward(ready, to: next))
        }
        return actions + progress()
    }

    /// The successor acknowledged everything through `lsn`, under `epoch`, and holds its log
    /// durably through `held[0]`, the member after it through `held[1]`, and so on (empty: not
    /// said — a node from before acknowledgement modes).
    public mutating func acknowledged(through lsn: LSN, held: [LSN] = [], epoch: UInt64) -> [Action] {
        if let refusal = fence(epoch) { return [refusal] }
        if let beyond = held.first(where: { $0.seq > lastAccepted.seq }) {
            return [.refuse(nil, CatenaError(.protocolViolation, "successor says it holds \(beyond), which this node never sent (its log ends at \(lastAccepted))"))]
        }
        if !held.isEmpty && held != downstreamHeld && configuration.successor(of: me) != nil {
            downstreamHeld = held
            if lsn.seq <= downstreamAcknowledged.seq { return progress() }
        }
        guard lsn.seq > downstreamAcknowledged.seq else { return [] }
        guard lsn.seq <= lastAccepted.seq, epochOf(seq: lsn.seq).map({ $0 == lsn.epoch }) ?? true else {
            return [.refuse(nil, CatenaError(.protocolViolation, "acknowledgement of \(lsn), which this node never sent (its log ends at \(lastAccepted))"))]
        }
        downstreamAcknowledged = lsn
        while let first = sent.first, first.lsn.seq <= lsn.seq {
            inFlightBytes -= first.bytes
            sent.removeFirst()
        }
        return progress()
    }

    /// A new configuration (newer epoch) arrives from the master.
    ///
    /// A node that became tail acknowledges what it holds; a node with a new predecessor
    /// repeats its acknowledgement to it; a node whose successor changed waits for the new
    /// successor to report its last LSN (``successorReported(lastLSN:epoch:)``), then resends
    /// the rest from its log. A head that is demoted gives up its pending writes (their outcome
    /// is decided by the new head, where clients retry with the same request id); a node that
    /// becomes head takes over the uncommitted writes of its log.
    public mutating func reconfigure(_ new: ChainConfiguration) -> [Action] {
        guard new.epoch > configuration.epoch else { return [] }
        let old = configuration
        configuration = new
        var actions: [Action] = []
        let wasHead = old.role(of: me)?.takesWrites ?? false
        let isHead = role?.takesWrites ?? false
        if wasHead && !isHead {
            let abandoned = pending.map(\.requestID) + heldRefusals.map(\.requestID)
            pending = []
            heldRefusals = []
            weak = [:]
            uncommittedBytes = 0
            for id in abandoned {
                actions.append(.refuse(id, CatenaError(.redirect, "\(me) is no longer the head; retry with the same request id at the new head, which knows whether it committed")))
            }
        } else if isHead && !wasHead {
            takeOverPending()
        }
        if new.successor(of: me)?.id != old.successor(of: me)?.id {
            // The new successor's position is unknown until it reports; it acknowledged nothing,
            // and nothing was sent to it.
            downstreamAcknowledged = .zero
            sent = []
            inFlightBytes = 0
        }
        // Which member is how far down may have changed: what the successor said of the
        // members after it is forgotten until it says it again in this configuration.
        downstreamHeld = []
        heldSent = []
        if let previous = new.predecessor(of: me), previous.id != old.predecessor(of: me)?.id, acknowledged != .zero {
            heldSent = held
            actions.append(.acknowledge(through: acknowledged, held: held, to: previous))
        }
        return actions + progress()
    }

    /// The successor reports the last LSN in its log on a new connection, under `epoch`:
    /// whatever was forwarded before went with the old connection, so resend from the log what
    /// it lacks of what is durable here (what is not yet durable is forwarded once it is).
    public mutating func successorReported(lastLSN: LSN, epoch: UInt64) -> [Action] {
        if let refusal = fence(epoch) { return [refusal] }
        guard let next = configuration.successor(of: me) else { return [] }
        guard lastLSN.seq <= lastAccepted.seq, epochOf(seq: lastLSN.seq).map({ $0 == lastLSN.epoch }) ?? true else {
            return [.refuse(nil, CatenaError(.lsnOutOfOrder, "successor \(next.id) reports \(lastLSN), which this log (ending at \(lastAccepted)) does not have; it must truncate and rejoin"))]
        }
        guard lastLSN.seq < durable.seq else { return [] }
        return [.resend(after: lastLSN, through: durable, to: next)]
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

    /// Takes `r` into the local log's bookkeeping.
    private mutating func accept(_ r: EncodedRecord) {
        if epochStarts.last?.epoch != r.lsn.epoch { epochStarts.append((r.lsn.epoch, r.lsn.seq)) }
        lastAccepted = r.lsn
        undurable.append(r)
        if forgottenBefore == .max { forgottenBefore = r.header.timestamp }
        if r.header.requestID != .none { remember(r.header.requestID, r.lsn, timestamp: r.header.timestamp, fence: r.type == .fence) }
    }

    /// The newest version of `key` among the records this machine accepted: the newest of
    /// them not yet durable, else what the durable log holds. Chunks are no version of a key.
    private func newestVersion(of key: Key, durableVersion: (Key) throws(CatenaError) -> KeyVersion?) throws(CatenaError) -> KeyVersion? {
        for r in undurable.reversed() where r.type.isVersion && r.key == key {
            return r.type == .delete ? nil : KeyVersion(lsn: r.lsn, contentChecksum: r.header.contentChecksum)
        }
        return try durableVersion(key)
    }

    /// A node that becomes head takes the uncommitted writes of its log as pending.
    private mutating func takeOverPending() {
        let committed = acknowledged.seq
        pending = Deque(requestOrder.lazy.filter { $0.lsn.seq > committed }
            .map { Pending(requestID: $0.requestID, lsn: $0.lsn, bytes: 0, fence: $0.fence) })
        uncommittedBytes = 0
    }

    /// The epoch of the local record at `seq`, if the machine knows it.
    private func epochOf(seq: UInt64) -> UInt64? {
        guard seq <= lastAccepted.seq, let i = epochStarts.lastIndex(where: { $0.firstSeq <= seq }) else { return nil }
        return epochStarts[i].epoch
    }

    /// How far this node and each member after it hold their logs durably: what it tells its
    /// predecessor with each acknowledgement.
    public var held: [LSN] { [durable] + downstreamHeld }

    /// Acknowledge (or commit) whatever became durable here and acknowledged downstream, and
    /// answer the writes in weaker modes that enough members now hold.
    private mutating func progress() -> [Action] {
        guard let role else { return [] }
        let downstream = configuration.successor(of: me) == nil ? durable : downstreamAcknowledged
        let ackable = durable.seq <= downstream.seq ? durable : downstream
        var actions: [Action] = []
        if role.takesWrites { actions += answerWeak(committed: ackable.seq > acknowledged.seq ? ackable : acknowledged) }
        if ackable.seq <= acknowledged.seq {
            // Nothing newly acknowledged; but how far members hold their logs may be news
            // upstream, where a write may wait for the first k of them.
            if let previous = configuration.predecessor(of: me), held != heldSent, acknowledged != .zero {
                heldSent = held
                actions.append(.acknowledge(through: acknowledged, held: heldSent, to: previous))
            }
            return actions
        }
        acknowledged = ackable
        if let previous = configuration.predecessor(of: me) {
            heldSent = held
            actions.append(.acknowledge(through: ackable, held: heldSent, to: previous))
        }
        if role.takesWrites {
            var done: [Commit] = []
            var settled: [Action] = []
            while let first = pending.first, first.lsn.seq <= ackable.seq {
                if first.fence {
                    settled.append(.refuse(first.requestID, Self.notApplied(first.requestID, first.lsn)))
                } else {
                    done.append(Commit(requestID: first.requestID, lsn: first.lsn))
                }
                uncommittedBytes -= first.bytes
                pending.removeFirst()
            }
            if !done.isEmpty { actions.append(.committed(done)) }
            actions += settled
            while let first = heldRefusals.first, first.through.seq <= ackable.seq {
                actions.append(.refuse(first.requestID, first.error))
                heldRefusals.removeFirst()
            }
        }
        forgetCommittedRequests()
        return actions
    }

    /// Answers the writes in weaker modes that as many members as they ask now hold (or that
    /// are `committed`).
    private mutating func answerWeak(committed: LSN) -> [Action] {
        guard !weak.isEmpty else { return [] }
        let held = self.held
        var answered: [Commit] = []
        for k in weak.keys.sorted() {
            let mode = AckMode.first(k)
            while let first = weak[k]?.first, mode.isHeld(first.lsn, heldThrough: held, committed: committed) {
                answered.append(Commit(requestID: first.requestID, lsn: first.lsn))
                weak[k]!.removeFirst()
            }
            if weak[k]?.isEmpty == true { weak[k] = nil }
        }
        return answered.isEmpty ? [] : [.held(answered.sorted { $0.lsn.seq < $1.lsn.seq })]
    }

    /// Stops waiting to answer `id` in a weaker mode: it is answered once committed.
    private mutating func dropWeak(_ id: RequestID) {
        for k in Array(weak.keys) {
            weak[k]?.removeAll { $0.requestID == id }
            if weak[k]?.isEmpty == true { weak[k] = nil }
        }
    }

    /// The answer to a write, or a settlement, of a request a fence settled.
    private static func notApplied(_ id: RequestID, _ fence: LSN) -> CatenaError {
        CatenaError(.notApplied, "request \(id) was settled as not applied (fence \(fence)); it never applies", requestID: id)
    }

    private mutating func remember(_ id: RequestID, _ lsn: LSN, timestamp: UInt64, fence: Bool) {
        requests[id] = lsn
        if fence { fences.insert(id) }
        requestOrder.append(RememberedRequest(requestID: id, lsn: lsn, timestamp: timestamp, fence: fence))
        newestTimestamp = max(newestTimestamp, timestamp)
        forgetCommittedRequests()
    }

    /// Forgets the oldest request ids, committed ones only, once they are older than the request
    /// window and more than ``Limits/rememberedRequests`` are kept — or, past
    /// ``Limits/maxRememberedRequests``, whatever their age (counted). Ids are kept in LSN order,
    /// so the oldest are committed first: O(1) amortized.
    private mutating func forgetCommittedRequests() {
        while requestOrder.count > limits.rememberedRequests, let old = requestOrder.first, old.lsn.seq <= acknowledged.seq {
            let expired = newestTimestamp >= limits.requestWindow && old.timestamp < newestTimestamp - limits.requestWindow
            guard expired || requestOrder.count > limits.maxRememberedRequests else { break }
            if !expired { requestsForgottenEarly += 1 }
            forgottenBefore = max(forgottenBefore == .max ? 0 : forgottenBefore, old.timestamp &+ 1)
            requestOrder.removeFirst()
            if requests[old.requestID] == old.lsn {
                requests[old.requestID] = nil
                if old.fence { fences.remove(old.requestID) }
            }
        }
    }
}
