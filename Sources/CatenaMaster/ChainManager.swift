import CatenaCluster
import CatenaCore

/// The master's failure detector and reconfiguration logic for one chain: heartbeats and
/// operator requests in, replies and proposed next states out.
///
/// A pure state machine: no I/O, no clock reads — `now` is a monotonic clock in nanoseconds,
/// passed in by the caller (`ContinuousClock` in the master, a fake clock in tests). The master
/// actor interprets it: it answers each heartbeat with ``heartbeat(_:now:)``'s ``Reply``; after
/// every heartbeat, operator request and persist result, and on a timer (every heartbeat
/// interval), it asks ``nextProposal(now:)`` for the next state, compare-and-swaps it into the
/// state file, and reports the outcome with ``proposalPersisted(now:)`` or ``proposalFailed()``.
///
/// Rules it keeps:
/// - persisted before announced: replies carry only ``state``, the active (persisted) state,
///   never the ``proposal``; at most one proposal is in flight. A proposal that changes the
///   configuration (members, their order or addresses) has the next epoch and a new history
///   entry for it; one that only records a first seq or changes standbys keeps the epoch;
/// - leases: each heartbeat of a member renews its lease (``Settings/lease``), unless the member
///   is leaving or the proposal in flight removes it. A member is removed only by a proposal
///   made once the lease it last got has run out, so a paused old tail can never answer a read
///   after the configuration without it is active. A new machine holds every member leased for
///   one lease from its start (a restarted master does not know what it granted before);
/// - failure detection: a member without a heartbeat for more than ``Settings/failureTimeout``
///   (counted from its last heartbeat, or from the machine's start) has failed. Every failed
///   member whose lease ran out is dropped in one proposal — a failed head's successor becomes
///   head, a failed tail's predecessor becomes tail, a failed middle's neighbours are linked —
///   and becomes a standby, which may rejoin once it caught up. A failure noticed while a
///   proposal is in flight is handled by the next one;
/// - never empty, never invented data: if every member would go, the one most worth keeping
///   stays (a live one before a failed one, then the highest reported LSN, then the later in
///   chain order) and the chain is unavailable until it is back; a standby only ever joins as
///   the tail after a live, healthy tail, never alone. So a chain that lost every member
///   restarts only from a member of its last configuration;
/// - a joined member gets no lease (so serves no reads as tail) until it reported at least what
///   its predecessor held once the predecessor knew it was no longer the tail: appended within
///   ``Settings/catchUpLagRecords``, it may lack writes the old tail committed and acknowledged;
/// - joining: a standby that heartbeated within the failure timeout, whose log is a prefix of
///   the chain's by the epoch history (its highest LSN is the chain's record at that seq, and the
///   current epoch's first seq is recorded) and whose highest seq is within
///   ``Settings/catchUpLagRecords`` of the healthy tail's is appended as the new tail, one per
///   proposal. A standby still holding writes of a replaced head that never committed truncates
///   them before it can join;
/// - operator requests: ``addNode(_:address:)`` makes a standby; ``removeNode(_:now:)`` forgets
///   a standby and drains a member (no more lease renewals, removed once its lease ran out, then
///   forgotten: its heartbeats are answered ``Standing/unknown`` and it stops). Neither is
///   persisted before it is part of a persisted proposal; a master restart loses a drain in
///   progress (the operator asks again);
/// - the first seq of the current epoch is recorded from its head's report, once. It may be
///   below an earlier epoch's: that epoch's head wrote records its successor never got.
public struct ChainManager: Sendable {
    /// The failure detector's settings.
    public struct Settings: Hashable, Sendable {
        /// A member without a heartbeat for longer than this has failed (the topology's
        /// `heartbeat.timeout_ms`). Default 1 s.
        public var failureTimeout: Duration
        /// The lease granted with each heartbeat of a member; at most ``failureTimeout``.
        /// Default: the failure timeout.
        public var lease: Duration
        /// A standby whose highest seq is within this many records of the tail's has caught up
        /// and joins as the new tail. Default 256.
        public var catchUpLagRecords: UInt64

        /// Creates settings; `lease` defaults to `failureTimeout`.
        public init(failureTimeout: Duration = .seconds(1), lease: Duration? = nil, catchUpLagRecords: UInt64 = 256) {
            self.failureTimeout = failureTimeout
            self.lease = lease ?? failureTimeout
            self.catchUpLagRecords = catchUpLagRecords
        }
    }

    /// A node's heartbeat, as the master reads it.
    public struct Beat: Hashable, Sendable {
        /// The node.
        public var node: NodeID
        /// `host:port` where it accepts connections.
        public var address: String
        /// The highest durable LSN in its log.
        public var highestLSN: LSN
        /// Sent by the head of the current epoch before its first write there: the epoch and
        /// the seq it will write first (its log's last seq + 1). It writes once the history it
        /// gets back records it.
        public var epochStart: EpochStart?
        /// The configuration epoch the node runs (0: none yet, or not said).
        public var epoch: UInt64

        /// Creates a heartbeat.
        public init(node: NodeID, address: String, highestLSN: LSN, epochStart: EpochStart? = nil, epoch: UInt64 = 0) {
            self.node = node
            self.address = address
            self.highestLSN = highestLSN
            self.epochStart = epochStart
            self.epoch = epoch
        }
    }

    /// What a node is to the master.
    public enum Standing: Hashable, Sendable {
        /// A member of the active configuration.
        case member
        /// A standby: catching up, to be appended as the tail once caught up.
        case joining
        /// Neither: never added, or removed by an operator. The node must stop.
        case unknown
    }

    /// The answer to a heartbeat.
    public struct Reply: Hashable, Sendable {
        /// The active (persisted) configuration.
        public var configuration: ChainConfiguration
        /// The active (persisted) epoch history.
        public var history: [EpochStart]
        /// What the node is.
        public var standing: Standing
        /// The lease granted, counted by the node from when it sent the heartbeat; nil: none
        /// (not a member, or a member that is leaving or being removed).
        public var lease: Duration?

        /// Creates a reply.
        public init(configuration: ChainConfiguration, history: [EpochStart], standing: Standing, lease: Duration?) {
            self.configuration = configuration
            self.history = history
            self.standing = standing
            self.lease = lease
        }
    }

    /// How a node looks to the failure detector.
    public enum Health: Hashable, Sendable {
        /// A member that heartbeated within half the failure timeout.
        case healthy
        /// A member without a heartbeat for more than half the failure timeout.
        case suspect
        /// Without a heartbeat for more than the failure timeout (a member: to be removed).
        case failed
        /// Being removed by an operator.
        case leaving
        /// A standby heartbeating, catching up.
        case joining
    }

    /// One node in ``status(now:)``.
    public struct NodeReport: Hashable, Sendable {
        /// The node.
        public var id: NodeID
        /// Its address in the active state (for a node being added: as given or announced).
        public var address: String
        /// Its role in the active configuration; nil for a standby.
        public var role: ChainRole?
        /// What it is to the master.
        public var standing: Standing
        /// How it looks to the failure detector.
        public var health: Health
        /// The highest LSN it reported; nil if it has not heartbeated since the master started.
        public var highestLSN: LSN?
        /// Records it is behind the most advanced member; nil if unknown.
        public var lag: UInt64?
        /// Nanoseconds since its last heartbeat; nil if none since the master started.
        public var sinceHeartbeat: UInt64?
        /// Nanoseconds until the lease the master last granted it runs out (an upper bound on
        /// the node's own); nil if it holds none.
        public var leaseRemaining: UInt64?
    }

    /// The settings.
    public let settings: Settings
    /// The active state: persisted, and the only one ever announced.
    public private(set) var state: MasterState
    /// The next state, being persisted; at most one is in flight.
    public private(set) var proposal: MasterState?

    private let failureTimeout: UInt64
    private let lease: UInt64
    /// When the machine started: the last heartbeat of members not heard from since.
    private let startedAt: UInt64
    /// The last heartbeat of each known node (member, standby, being added).
    private var heard: [NodeID: UInt64] = [:]
    /// The highest LSN each known node reported last.
    private var reported: [NodeID: LSN] = [:]
    /// The latest instant each member's lease can run out at (an upper bound: the node counts
    /// from when it sent the heartbeat, before the master received it).
    private var leaseUntil: [NodeID: UInt64] = [:]
    /// The latest connectable address each member or standby announced.
    private var announced: [NodeID: String] = [:]
    /// Nodes an operator added that are not yet standbys of the active state, in order.
    private var adding: [ChainMember] = []
    /// Members to remove once their lease ran out, and standbys to forget: an operator's.
    private var leaving: Set<NodeID> = []
    /// The current head's report of the current epoch's first seq, not yet recorded.
    private var reportedStart: EpochStart?
    /// Members appended as the tail that may still lack writes committed before they joined
    /// (appended within `catchUpLagRecords`, and their predecessor may have committed more as
    /// tail before it learnt of them): no lease until they reported at least the LSN their
    /// predecessor reported in a heartbeat sent at `epoch` or later, when it knew it was no
    /// longer the tail. Re-armed when their predecessor changes.
    private var catchingUp: [NodeID: (epoch: UInt64, need: LSN?)] = [:]

    /// Creates the machine over the persisted `state`, at `now`. Every member is held leased
    /// until `now` + lease, and none has failed before `now` + failure timeout.
    public init(state: MasterState, settings: Settings = Settings(), now: UInt64) {
        precondition(state.problem() == nil, "a malformed master state: \(state.problem()!)")
        precondition(settings.lease > .zero && settings.lease <= settings.failureTimeout,
                     "the lease (\(settings.lease)) must be positive and at most the failure timeout (\(settings.failureTimeout))")
        self.state = state
        self.settings = settings
        self.failureTimeout = Self.nanoseconds(settings.failureTimeout)
        self.lease = Self.nanoseconds(settings.lease)
        self.startedAt = now
        for m in state.configuration.members {
            leaseUntil[m.id] = Self.plus(now, lease)
        }
    }

    // MARK: - Events

    /// A node's heartbeat arrives at `now`. Members, standbys and nodes being added are
    /// recorded (liveness, highest LSN, a new connectable address — unconnectable ones are
    /// ignored); a member is granted a lease unless it is leaving or being removed; the current
    /// head's report of the current epoch's first seq is taken for the next proposal. Anyone
    /// else is answered ``Standing/unknown`` and nothing about it is kept.
    ///
    /// Call ``nextProposal(now:)`` right after: an address change or a first seq waits for it.
    public mutating func heartbeat(_ beat: Beat, now: UInt64) -> Reply {
        let id = beat.node
        let isMember = state.configuration.members.contains { $0.id == id }
        let addingIndex = adding.firstIndex { $0.id == id }
        guard isMember || addingIndex != nil || state.standbys.contains(where: { $0.id == id }) else {
            return reply(.unknown, lease: nil)
        }
        heard[id] = max(heard[id] ?? 0, now)
        reported[id] = beat.highestLSN
        if Self.isConnectable(beat.address) {
            if let addingIndex {
                adding[addingIndex].address = beat.address
            } else {
                announced[id] = beat.address
            }
        }
        if let start = beat.epochStart { take(start, from: id) }
        guard isMember else { return reply(.joining, lease: nil) }
        for (joiner, barrier) in catchingUp where barrier.need == nil && beat.epoch >= barrier.epoch
            && state.configuration.predecessor(of: joiner)?.id == id {
            catchingUp[joiner]?.need = beat.highestLSN
        }
        if let need = catchingUp[id]?.need, beat.highestLSN.seq >= need.seq { catchingUp[id] = nil }
        guard !leaving.contains(id), catchingUp[id] == nil,
              proposal.map({ $0.configuration.members.contains { $0.id == id } }) ?? true else {
            return reply(.member, lease: nil)
        }
        leaseUntil[id] = max(leaseUntil[id] ?? 0, Self.plus(now, lease))
        return reply(.member, lease: settings.lease)
    }

    /// The next state to persist, or nil if nothing is to change or a proposal is in flight.
    /// The caller compare-and-swaps it over ``state``'s epoch and reports the outcome.
    ///
    /// One proposal carries everything ready at `now`: the current epoch's reported first seq,
    /// announced addresses, standbys added and forgotten, every failed or drained member whose
    /// lease ran out (all at once: one epoch, one reconfiguration for simultaneous failures),
    /// and at most one caught-up standby appended as the new tail.
    public mutating func nextProposal(now: UInt64) -> MasterState? {
        guard proposal == nil else { return nil }
        var next = state
        let last = next.epochHistory.count - 1
        if let start = reportedStart, start.epoch == state.epoch, next.epochHistory[last].firstSeq == nil {
            next.epochHistory[last].firstSeq = start.firstSeq
        }
        for i in next.configuration.members.indices {
            if let a = announced[next.configuration.members[i].id] { next.configuration.members[i].address = a }
        }
        for i in next.standbys.indices {
            if let a = announced[next.standbys[i].id] { next.standbys[i].address = a }
        }
        next.standbys.removeAll { leaving.contains($0.id) }
        next.standbys += adding

        // Removals: failed members, and drained ones, once their lease ran out.
        let members = state.configuration.members
        var removed = Set(members.map(\.id).filter { id in
            (hasFailed(id, now: now) || leaving.contains(id)) && now >= leaseUntil[id, default: 0]
        })
        if removed.count == members.count, let keep = keeper(now: now) {
            removed.remove(keep)
            leaving.remove(keep)
        }
        for m in next.configuration.members where removed.contains(m.id) && !leaving.contains(m.id) {
            next.standbys.append(m)
        }
        next.configuration.members.removeAll { removed.contains($0.id) }

        // A join: one caught-up standby after a healthy tail that stays. Caught up: its log is a
        // prefix of the chain's (an old head's writes the chain never committed are truncated
        // first) and within `catchUpLagRecords` of the tail's.
        if let tail = members.last, !removed.contains(tail.id), !leaving.contains(tail.id),
           health(of: tail.id, member: true, now: now) == .healthy, let tailSeq = reported[tail.id]?.seq {
            let history = EpochHistory(next.epochHistory)
            let ready = state.standbys.filter { s in
                !leaving.contains(s.id) && heard[s.id].map { Self.since($0, now) <= failureTimeout } == true
                    && reported[s.id].map { Self.isPrefix($0, of: history)
                        && ($0.seq >= tailSeq || tailSeq - $0.seq <= settings.catchUpLagRecords) } == true
            }
            if let joiner = ready.max(by: { reported[$0.id]!.seq < reported[$1.id]!.seq }),
               let i = next.standbys.firstIndex(where: { $0.id == joiner.id }) {
                next.configuration.members.append(next.standbys.remove(at: i))
            }
        }

        if next.configuration.members != state.configuration.members {
            next.configuration.epoch = state.epoch + 1
            next.epochHistory.append(EpochStart(epoch: next.epoch))
        }
        guard next != state else { return nil }
        assert(next.problem() == nil, "proposed a malformed state: \(next.problem()!)")
        proposal = next
        return next
    }

    /// The proposal was persisted (the compare-and-swap succeeded) at `now`: it becomes the
    /// active state. Nodes no longer members or standbys are forgotten.
    public mutating func proposalPersisted(now: UInt64) {
        guard let next = proposal else { preconditionFailure("proposalPersisted without a proposal in flight") }
        let members = Set(next.configuration.members.map(\.id))
        for m in state.configuration.members where !members.contains(m.id) {
            assert(now >= leaseUntil[m.id, default: 0], "\(m.id) removed while its lease still runs")
            leaseUntil[m.id] = nil
        }
        let before = state.configuration
        for m in next.configuration.members {
            if before.role(of: m.id) == nil {
                catchingUp[m.id] = (next.epoch, nil)
            } else if catchingUp[m.id] != nil, before.predecessor(of: m.id) != next.configuration.predecessor(of: m.id) {
                catchingUp[m.id] = (next.epoch, nil)
            }
        }
        catchingUp = catchingUp.filter { members.contains($0.key) }
        state = next
        proposal = nil
        let known = members.union(next.standbys.map(\.id))
        adding.removeAll { known.contains($0.id) }
        let stillAdding = Set(adding.map(\.id))
        for id in Set(heard.keys).union(reported.keys).union(announced.keys)
        where !known.contains(id) && !stillAdding.contains(id) {
            heard[id] = nil
            reported[id] = nil
            announced[id] = nil
        }
        leaving = leaving.filter { known.contains($0) }
        if let start = reportedStart, start.epoch != state.epoch || state.epochHistory.last?.firstSeq != nil {
            reportedStart = nil
        }
    }

    /// The proposal was not persisted (the compare-and-swap failed): it is dropped, and
    /// ``nextProposal(now:)`` proposes again from the active state.
    public mutating func proposalFailed() {
        proposal = nil
        let known = Set(state.configuration.members.map(\.id)).union(state.standbys.map(\.id))
        leaving = leaving.filter { known.contains($0) }
    }

    // MARK: - Operator requests

    /// An operator adds `id` at `address`: it becomes a standby with the next proposal, joins
    /// once caught up. Adding a known node again at the same address does nothing.
    ///
    /// Refused (``CatenaError/Code/invalidArgument``): an address peers cannot connect to
    /// (not `HOST:PORT`, a wildcard host, port 0), a known node at another address, a node being
    /// removed.
    public mutating func addNode(_ id: NodeID, address: String) throws(CatenaError) {
        guard Self.isConnectable(address) else {
            throw CatenaError(.invalidArgument, "'\(address)' is not an address peers can connect to (HOST:PORT, not a wildcard host, not port 0)")
        }
        guard !leaving.contains(id) else {
            throw CatenaError(.invalidArgument, "\(id) is being removed; add it again once it is gone")
        }
        if let current = knownAddress(of: id) {
            guard current == address else {
                throw CatenaError(.invalidArgument, "\(id) is already known at \(current), not at \(address)")
            }
            return
        }
        adding.append(ChainMember(id: id, address: address))
    }

    /// An operator removes `id`. A standby (or a node being added) is forgotten with the next
    /// proposal. A member is drained: it gets no more leases, and the first proposal after its
    /// lease ran out removes it; then it is forgotten, so its heartbeats get
    /// ``Standing/unknown`` and it stops. Removing a node already leaving does nothing.
    ///
    /// Refused: a node neither member nor standby (``CatenaError/Code/notFound``); the last
    /// member not leaving, or one whose remaining members have all failed at `now`
    /// (``CatenaError/Code/invalidArgument``).
    public mutating func removeNode(_ id: NodeID, now: UInt64) throws(CatenaError) {
        if let i = adding.firstIndex(where: { $0.id == id }) {
            adding.remove(at: i)
            if proposal?.standbys.contains(where: { $0.id == id }) == true { leaving.insert(id) }
            return
        }
        if state.standbys.contains(where: { $0.id == id }) {
            leaving.insert(id)
            return
        }
        guard state.configuration.members.contains(where: { $0.id == id }) else {
            throw CatenaError(.notFound, "\(id) is neither a member nor a standby of chain \(state.chainID)")
        }
        guard !leaving.contains(id) else { return }
        let others = state.configuration.members.filter { $0.id != id && !leaving.contains($0.id) }
        guard !others.isEmpty else {
            throw CatenaError(.invalidArgument, "\(id) is the last member of chain \(state.chainID): removing it would leave the chain without members")
        }
        guard others.contains(where: { !hasFailed($0.id, now: now) }) else {
            throw CatenaError(.invalidArgument, "every other member of chain \(state.chainID) has failed: removing \(id) would leave the chain without a live member")
        }
        leaving.insert(id)
    }

    // MARK: - Status

    /// Every node the master knows at `now`: members in chain order, then standbys, then nodes
    /// being added.
    public func status(now: UInt64) -> [NodeReport] {
        let members = state.configuration.members
        let top = members.compactMap { reported[$0.id]?.seq }.max()
        func report(_ m: ChainMember, member: Bool) -> NodeReport {
            let lsn = reported[m.id]
            let until = leaseUntil[m.id] ?? 0
            return NodeReport(
                id: m.id, address: m.address, role: state.configuration.role(of: m.id),
                standing: member ? .member : .joining, health: health(of: m.id, member: member, now: now),
                highestLSN: lsn, lag: top.flatMap { top in lsn.map { top > $0.seq ? top - $0.seq : 0 } },
                sinceHeartbeat: heard[m.id].map { Self.since($0, now) },
                leaseRemaining: member && until > now ? until - now : nil)
        }
        return members.map { report($0, member: true) } + (state.standbys + adding).map { report($0, member: false) }
    }

    /// Whether `id` joined and has not yet shown it holds what its predecessor held: it gets no
    /// lease until then.
    public func isCatchingUp(_ id: NodeID) -> Bool { catchingUp[id] != nil }

    /// Whether a member of the active configuration is alive at `now`. False: the chain is
    /// unavailable until one of its members comes back — a standby cannot restore it.
    public func isAvailable(now: UInt64) -> Bool {
        state.configuration.members.contains { !hasFailed($0.id, now: now) }
    }

    // MARK: - Internals

    private func reply(_ standing: Standing, lease: Duration?) -> Reply {
        Reply(configuration: state.configuration, history: state.epochHistory, standing: standing, lease: lease)
    }

    /// Takes the current head's report of the current epoch's first seq, if it may be recorded.
    private mutating func take(_ start: EpochStart, from id: NodeID) {
        // It may be below an earlier epoch's first seq: a head replaced before its successor got
        // its last writes (they never committed) leaves a shorter log to the next head, which
        // continues from its own end (EpochHistory's "a later epoch may start below").
        guard id == state.configuration.head?.id, start.epoch == state.epoch, start.firstSeq != nil,
              state.epochHistory.last?.firstSeq == nil else { return }
        reportedStart = start
    }

    /// Whether `id` has had no heartbeat for longer than the failure timeout at `now`.
    private func hasFailed(_ id: NodeID, now: UInt64) -> Bool {
        Self.since(heard[id] ?? startedAt, now) > failureTimeout
    }

    private func health(of id: NodeID, member: Bool, now: UInt64) -> Health {
        if member {
            if hasFailed(id, now: now) { return .failed }
            if leaving.contains(id) { return .leaving }
            return Self.since(heard[id] ?? startedAt, now) > failureTimeout / 2 ? .suspect : .healthy
        }
        if leaving.contains(id) { return .leaving }
        return heard[id] != nil && !hasFailed(id, now: now) ? .joining : .failed
    }

    /// The member to keep when every member would go: a live one before a failed one, then
    /// the highest reported LSN, then the later in chain order (the tail side).
    private func keeper(now: UInt64) -> NodeID? {
        state.configuration.members.enumerated().max { a, b in
            let x = (hasFailed(a.element.id, now: now) ? 0 : 1, reported[a.element.id] ?? .zero, a.offset)
            let y = (hasFailed(b.element.id, now: now) ? 0 : 1, reported[b.element.id] ?? .zero, b.offset)
            return x < y
        }?.element.id
    }

    /// The address the next proposal would give `id`, if the machine knows it.
    private func knownAddress(of id: NodeID) -> String? {
        if let m = adding.first(where: { $0.id == id }) { return m.address }
        guard let m = state.configuration.members.first(where: { $0.id == id }) ?? state.standbys.first(where: { $0.id == id }) else {
            return nil
        }
        return announced[id] ?? m.address
    }

    /// Whether a log ending at `last` is a prefix of the chain's, by `history`: it is empty, or
    /// its last record is the chain's record at that seq (same epoch — and two logs that share
    /// an LSN share everything below it). Until the current epoch's first seq is recorded the
    /// history cannot tell (that epoch may start below `last`), so no.
    static func isPrefix(_ last: LSN, of history: EpochHistory) -> Bool {
        guard last != .zero else { return true }
        guard history.entries.last?.firstSeq != nil else { return false }
        return history.epoch(atSeq: last.seq) == last.epoch
    }

    /// Whether peers can connect to `address`: `HOST:PORT`, not a wildcard host, not port 0.
    static func isConnectable(_ address: String) -> Bool {
        (try? Address(parsing: address)).map { !$0.isWildcard && $0.port != 0 } ?? false
    }

    private static func nanoseconds(_ d: Duration) -> UInt64 { UInt64(max(0, d.nanosecondsClamped)) }
    private static func since(_ then: UInt64, _ now: UInt64) -> UInt64 { now >= then ? now - then : 0 }
    private static func plus(_ t: UInt64, _ d: UInt64) -> UInt64 {
        let (sum, overflow) = t.addingReportingOverflow(d)
        return overflow ? .max : sum
    }
}
