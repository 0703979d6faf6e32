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
///   entry for it; one that only records a first seq, changes standbys or records which members
///   are catching up keeps the epoch;
/// - leases: each heartbeat of a member renews its lease (``Settings/lease``), unless the member
///   is leaving or the proposal in flight removes it. A member is removed only by a proposal
///   made once the lease it last got has run out, so a paused old tail can never answer a read
///   after the configuration without it is active. A new machine holds every member leased for
///   one lease from its start (a restarted master does not know what it granted before);
/// - the master's own pauses: a gap between two events (of any kind) longer than
///   ``Settings/pauseThreshold`` is the master not running, not its members being silent. The
///   first event after it — a heartbeat queued meanwhile as much as a tick — is a resume, handled
///   like a restart: silence counts from it and every member is held leased for one lease from it.
///   So no member is removed until it had a whole timeout to be heard after the resume. Tests that
///   mean the master to run through a stretch of time without events say so with ``tick(now:)``;
/// - failure detection: a member without a heartbeat for more than ``Settings/failureTimeout``
///   (counted from its last heartbeat, or from the machine's start or last resume), or whose
///   last heartbeat reports a failure (``Beat/failure``: its log or store stopped working while
///   it runs on), has failed. A member reporting a failure gets no lease. Every failed
///   member whose lease ran out is dropped in one proposal — a failed head's successor becomes
///   head, a failed tail's predecessor becomes tail, a failed middle's neighbours are linked —
///   and becomes a standby, which may rejoin once it caught up. A failure noticed while a
///   proposal is in flight is handled by the next one;
/// - never empty, never invented data, never a loss of committed writes: at least one member
///   that holds every committed write (not catching up, below) and is not leaving stays. If none
///   would, the one most worth keeping of those holding every committed write stays (a live one
///   before a failed one, then the highest reported LSN, then the later in chain order) — one
///   still staying if there is one, else one of those going — and, if it failed, the chain is
///   unavailable (``unavailableReason(now:)``) until it is back: a member still catching up never
///   becomes all the chain has. If the one kept was drained, its drain is cancelled, so the chain
///   never consists of members on their way out (without leases); a standby only ever joins as
///   the tail after a live, healthy tail, never alone. So a chain that lost every member
///   restarts only from a member of its last configuration that holds every committed write;
/// - joining: a standby that heartbeated within the failure timeout without reporting a
///   failure, whose log is a prefix of the chain's by the epoch history (its highest LSN is the
///   chain's record at that seq, and the current epoch's first seq is recorded) and whose
///   highest seq is at most the tail's and within ``Settings/catchUpLagRecords`` of it (a member
///   never has a successor holding more than it, unless its own log lost records) is appended as the new
///   tail, one per proposal — only behind a tail heard within half the timeout, not reporting a
///   failure, not leaving, and not itself catching up. A standby still holding writes of a
///   replaced head that never committed truncates them before it can join;
/// - operator requests: ``addNode(_:address:)`` makes a standby; ``removeNode(_:now:)`` forgets
///   a standby and drains a member (no more lease renewals, removed once its lease ran out, then
///   forgotten: its heartbeats are answered ``Standing/unknown`` and it stops). Neither is
///   persisted before it is part of a persisted proposal; a master restart loses a drain in
///   progress (the operator asks again);
/// - the first seq of the current epoch is recorded from its head's report, once. It may be below
///   an earlier epoch's: a head continues from its own log, which can end below what a replaced
///   head wrote and never got committed (see ``EpochHistory``);
/// - a joined member is *catching up*: it gets no lease (so serves no reads as tail, takes no
///   writes as head) until it reported at least what its predecessor held once the predecessor
///   knew it was no longer the tail: appended within ``Settings/catchUpLagRecords``, it may lack
///   writes the old tail committed and acknowledged. Re-armed when its predecessor changes; a
///   predecessor reporting a `corruption` failure (its log lost durable records) sets nothing. Who
///   is catching up is persisted (``MasterState/catchingUp``), with the join and again once they
///   caught up, so a restarted master re-arms it (the predecessor must report at the current
///   epoch) instead of taking the joiner for a holder of everything.
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
        /// The longest time between two events (heartbeats, ticks, persist results, operator
        /// requests) the machine takes as the master running. A longer gap means the master itself
        /// did not run — stopped, suspended, starved of CPU, stuck in a slow disk write — and
        /// heartbeats may be waiting unread: the first event after it is a *resume*, handled like
        /// a restart (see ``ChainManager``). The master ticks every twentieth of the failure
        /// timeout. Default: a quarter of the failure timeout.
        public var pauseThreshold: Duration

        /// Creates settings; `lease` defaults to `failureTimeout`, `pauseThreshold` to a quarter
        /// of it.
        public init(failureTimeout: Duration = .seconds(1), lease: Duration? = nil, catchUpLagRecords: UInt64 = 256,
                    pauseThreshold: Duration? = nil) {
            self.failureTimeout = failureTimeout
            self.lease = lease ?? failureTimeout
            self.catchUpLagRecords = catchUpLagRecords
            self.pauseThreshold = pauseThreshold ?? failureTimeout / 4
        }
    }

    /// A node's heartbeat, as the master reads it.
    public struct Beat: Hashable, Sendable {
        /// The node.
        public var node: NodeID
        /// `host:port` where it accepts connections.
        public var address: String
        /// The highest LSN in its log: the highest durable one from a member of the
        /// configuration it runs, the last one, durable or not, from a node that is no member
        /// of it (``NodeStateMachine/positionToReport(durable:logEnd:)``).
        public var highestLSN: LSN
        /// Sent by the head of the current epoch before its first write there: the epoch and
        /// the seq it will write first (its log's last seq + 1). It writes once the history it
        /// gets back records it.
        public var epochStart: EpochStart?
        /// The configuration epoch the node runs (0: none yet, or not said).
        public var epoch: UInt64
        /// The failure the node reports (its log or store stopped working, though it still runs);
        /// nil: healthy.
        public var failure: CatenaError?
        /// The node holds no lease as it sent this, and takes none from replies to earlier
        /// heartbeats (``NodeStateMachine/reportLeaseless(sentAt:)``).
        public var leaseless: Bool
        /// When the node sent it, by the node's clock (which never goes back within one
        /// ``incarnation``).
        public var sentAt: UInt64
        /// The node process's random id: `sentAt` compares only within one.
        public var incarnation: UInt64

        /// Creates a heartbeat.
        public init(node: NodeID, address: String, highestLSN: LSN, epochStart: EpochStart? = nil, epoch: UInt64 = 0,
                    failure: CatenaError? = nil, leaseless: Bool = false, sentAt: UInt64 = 0, incarnation: UInt64 = 0) {
            self.node = node
            self.address = address
            self.highestLSN = highestLSN
            self.epochStart = epochStart
            self.epoch = epoch
            self.failure = failure
            self.leaseless = leaseless
            self.sentAt = sentAt
            self.incarnation = incarnation
        }
    }

    /// What a node is to the master.
    public enum Standing: Hashable, Sendable {
        /// A member of the active configuration.
        case member
        /// A standby, or a node an operator is adding (before that is persisted too): catching
        /// up, to be appended as the tail once caught up.
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
        /// The failure its last heartbeat reported; nil if none.
        public var failure: CatenaError?
    }

    /// The chain runs a newer epoch than the active state: the state is stale (restored from an
    /// old backup, or changed behind this master's back).
    public struct Staleness: Hashable, Sendable {
        /// The highest epoch known to be in use.
        public var epoch: UInt64
        /// The node that reported running it; nil: this master activated it itself, before the
        /// state it holds now was loaded.
        public var node: NodeID?

        /// Creates a staleness.
        public init(epoch: UInt64, node: NodeID?) {
            self.epoch = epoch
            self.node = node
        }

        /// The error heartbeats and operator requests get, and the chain's reason in status.
        public func error(state: MasterState) -> CatenaError {
            let who = node.map { "\($0) runs epoch \(epoch)" } ?? "this master had activated epoch \(epoch) before it reloaded it"
            return CatenaError(.staleEpoch, "the master's state (epoch \(state.epoch)) is older than the chain's: \(who); it may have been restored from an old backup. The master hands out no configuration and changes nothing until it holds a state at least as new: put the latest master state in place (the master reloads it) or restart the master on it")
        }
    }

    /// The settings.
    public let settings: Settings
    /// The active state: persisted, and the only one ever announced.
    public private(set) var state: MasterState
    /// The next state, being persisted; at most one is in flight.
    public private(set) var proposal: MasterState?
    /// Leaving members taken at their word that they hold no lease (``Beat/leaseless``), each
    /// removable before its lease ran out: how often a drain was cut short.
    public private(set) var leasesReleased = 0
    /// What this manager changed, counted from its start (the master's metrics).
    public private(set) var changes = Changes()

    /// Counts of configuration changes.
    public struct Changes: Hashable, Sendable {
        /// Configurations persisted with a new epoch.
        public var reconfigurations = 0
        /// Members removed as failed.
        public var failovers = 0
        /// Members removed because they were leaving (drained, or removed by an operator).
        public var drains = 0
        /// Nodes that joined as the new tail.
        public var joins = 0
    }
    /// Set once the chain shows it runs an epoch above the active state's (a node's heartbeat
    /// says so, or the machine was made over a state older than one the master had activated):
    /// from then on heartbeats and operator requests are refused with
    /// ``CatenaError/Code/staleEpoch`` and nothing is proposed. Cleared only by a new machine
    /// over a state at least that new.
    public private(set) var staleness: Staleness?

    /// What the machine keeps about one node it knows.
    private struct Tracked: Sendable {
        /// The node.
        var id: NodeID
        /// Its address in the active state (a node being added: the operator's).
        var address: String
        /// What the node is: a member or standby of the active state, a node being added
        /// (``Standing/joining``), or one removed while the proposal adding it is in flight
        /// (``Standing/unknown``, kept only to be forgotten once that proposal is persisted).
        var standing: Standing
        /// Its last heartbeat; nil: none since the machine started.
        var heard: UInt64?
        /// The highest LSN it reported last.
        var reported: LSN?
        /// The epoch its last heartbeat ran (see ``Beat/epoch``).
        var reportedEpoch: UInt64 = 0
        /// The failure it reported last; nil: none.
        var failure: CatenaError?
        /// A member: the latest instant the lease it last got can run out at (an upper bound:
        /// the node counts from when it sent the heartbeat, before the master received it).
        var leaseUntil: UInt64 = 0
        /// The heartbeat the last lease was granted to: its node process and send time.
        var granted: (incarnation: UInt64, sentAt: UInt64)?
        /// The latest connectable address it announced.
        var announced: String?
        /// The last address text it sent, connectable or not (parsed only when it changes).
        var lastText: String?
        /// An operator removes it: a member drains, anyone else is forgotten.
        var leaving = false
        /// The proposal in flight removes it from the chain: no lease.
        var beingRemoved = false

        init(id: NodeID, address: String, standing: Standing) {
            self.id = id
            self.address = address
            self.standing = standing
        }

        /// The address the next proposal gives it.
        var next: ChainMember { ChainMember(id: id, address: announced ?? address) }

        /// Nanoseconds without a heartbeat at `now`, counted from `start` (the machine's start or
        /// the master's resume) if none since.
        func silence(at now: UInt64, since start: UInt64) -> UInt64 { ChainManager.since(max(heard ?? 0, start), now) }
    }

    /// A gap in the master's own events longer than ``Settings/pauseThreshold``.
    public struct Pause: Hashable, Sendable {
        /// The first event after the gap.
        public var resumedAt: UInt64
        /// Nanoseconds since the event before it.
        public var length: UInt64

        /// Creates a pause.
        public init(resumedAt: UInt64, length: UInt64) {
            self.resumedAt = resumedAt
            self.length = length
        }
    }

    private let failureTimeout: UInt64
    private let lease: UInt64
    private let pauseThreshold: UInt64
    /// When the machine started or the master last resumed from a pause: the last heartbeat of
    /// members not heard from since.
    private var attentiveSince: UInt64
    /// The latest instant of any event.
    private var lastEvent: UInt64
    /// A machine over a state loaded from the store grants no lease before this instant (see
    /// ``init(state:settings:now:inUse:loaded:)``).
    private let leasesFrom: UInt64
    /// The latest pause the machine noticed, if any.
    public private(set) var lastPause: Pause?
    /// Every node the machine knows: the members in chain order, then the standbys in order,
    /// then the nodes being added, then those to forget once the proposal in flight persists.
    private var records: [Tracked] = []
    /// Where each node's record is in ``records``.
    private var slots: [NodeID: Int] = [:]
    /// Nodes an operator added that are not yet standbys of the active state, in order.
    private var adding: [ChainMember] = []
    /// The current head's report of the current epoch's first seq, not yet recorded.
    private var reportedStart: EpochStart?
    /// A joined member's barrier: what it must report before it holds every committed write.
    private struct Barrier: Sendable {
        /// Its predecessor's reports count from heartbeats sent running this epoch on (when it
        /// knew it was no longer the tail).
        var epoch: UInt64
        /// The LSN its predecessor reported so; nil: not yet.
        var need: LSN?
    }

    /// Members appended as the tail that may still lack writes committed before they joined:
    /// no lease until they reported at least the LSN their predecessor reported in a heartbeat
    /// sent at the barrier's epoch or later.
    private var catchingUp: [NodeID: Barrier] = [:]

    /// Creates the machine over the persisted `state`, at `now`. Every member is held leased
    /// until `now` + lease, and none has failed before `now` + failure timeout.
    ///
    /// `inUse`: the highest epoch known to be in use (the previous machine's state's, or a
    /// ``staleness`` it found, when the master reloads its state); a `state` older than that is
    /// stale from the start.
    ///
    /// `loaded`: the state was read from the store (a restart or a reload), not created. Such a
    /// machine grants no lease for one failure timeout: every live member heartbeats within it,
    /// and one running a newer epoch shows the state is stale (restored from an old backup)
    /// before any member could serve with a lease from it. Members keep serving on the leases
    /// the previous master granted meanwhile, so a quick restart costs nothing.
    public init(state: MasterState, settings: Settings = Settings(), now: UInt64, inUse: Staleness? = nil, loaded: Bool = false) {
        precondition(state.problem() == nil, "a malformed master state: \(state.problem()!)")
        precondition(settings.lease > .zero && settings.lease <= settings.failureTimeout,
                     "the lease (\(settings.lease)) must be positive and at most the failure timeout (\(settings.failureTimeout))")
        self.state = state
        self.settings = settings
        precondition(settings.pauseThreshold > .zero, "the pause threshold (\(settings.pauseThreshold)) must be positive")
        self.failureTimeout = Self.nanoseconds(settings.failureTimeout)
        self.lease = Self.nanoseconds(settings.lease)
        self.pauseThreshold = Self.nanoseconds(settings.pauseThreshold)
        self.attentiveSince = now
        self.lastEvent = now
        self.leasesFrom = loaded ? Self.plus(now, Self.nanoseconds(settings.failureTimeout)) : now
        reindex()
        for i in state.configuration.members.indices {
            records[i].leaseUntil = Self.plus(now, lease)
        }
        // Members that may still lack committed writes: shown holding them only by what their
        // predecessor reports from now on.
        for id in state.catchingUp { catchingUp[id] = Barrier(epoch: state.epoch) }
        if let inUse, inUse.epoch > state.epoch { staleness = inUse }
    }

    // MARK: - Events

    /// A node's heartbeat arrives at `now`.
    ///
    /// Refused with ``CatenaError/Code/staleEpoch`` while the active state is older than the
    /// chain (see ``staleness``), which this heartbeat may show: it runs an epoch above the
    /// state's. Nothing about it is recorded then.
    ///
    /// Otherwise, members, standbys and nodes being added are
    /// recorded (liveness, highest LSN, the failure it reports if any, a new connectable address
    /// — unconnectable ones are ignored); a member is granted a
    /// lease unless it is leaving, being removed, reporting a failure or catching up; the current
    /// head's report of the current epoch's first seq is taken for the next proposal. Standbys
    /// and nodes being added are answered ``Standing/joining``; anyone else
    /// ``Standing/unknown``, and nothing about it is kept.
    ///
    /// Call ``nextProposal(now:)`` right after: an address change or a first seq waits for it.
    public mutating func heartbeat(_ beat: Beat, now: UInt64) throws(CatenaError) -> Reply {
        observe(now)
        if beat.epoch > state.epoch && beat.epoch > staleness?.epoch ?? 0 {
            staleness = Staleness(epoch: beat.epoch, node: beat.node)
        }
        if let staleness { throw staleness.error(state: state) }
        guard let i = slots[beat.node], records[i].standing != .unknown else { return Self.reply(state, .unknown, lease: nil) }
        var t = records[i]
        t.heard = max(t.heard ?? 0, now)
        t.reported = beat.highestLSN
        t.reportedEpoch = beat.epoch
        t.failure = beat.failure
        if beat.address != t.lastText {
            t.lastText = beat.address
            if Self.isConnectable(beat.address) { t.announced = beat.address }
        }
        if i == 0, let start = beat.epochStart { take(start) }
        if t.standing == .member {
            // A predecessor whose log lost records it had made durable (restored from an old
            // backup) reports less than it held: that bounds nothing its successor needs.
            for (joiner, barrier) in catchingUp where barrier.need == nil && beat.epoch >= barrier.epoch && beat.failure?.code != .corruption
                && state.configuration.predecessor(of: joiner)?.id == beat.node {
                catchingUp[joiner]?.need = beat.highestLSN
            }
            // Only a report made running the configuration it joined in counts: one made before
            // it learned it was appended is of its whole log, durable or not.
            if let barrier = catchingUp[beat.node], let need = barrier.need, beat.epoch >= barrier.epoch, beat.highestLSN.seq >= need.seq {
                catchingUp[beat.node] = nil
            }
        }
        // A leaving member that says it holds no lease has stopped serving (it takes no lease
        // from replies to earlier heartbeats, and this one's reply grants none): it need not be
        // waited for until its lease runs out. Only if the word is news: sent after the last
        // heartbeat granted a lease, by the same process — a heartbeat held up in the network
        // (on a connection the node gave up) may arrive after a later one that was granted one.
        let news = t.granted.map { beat.incarnation == $0.incarnation && beat.sentAt > $0.sentAt } ?? true
        if t.standing == .member && t.leaving && beat.leaseless && news && now < t.leaseUntil {
            t.leaseUntil = now
            leasesReleased += 1
        }
        var granted: Duration?
        if t.standing == .member && !t.leaving && !t.beingRemoved && t.failure == nil && catchingUp[beat.node] == nil && now >= leasesFrom {
            t.leaseUntil = max(t.leaseUntil, Self.plus(now, lease))
            granted = settings.lease
            if let g = t.granted, g.incarnation == beat.incarnation {
                t.granted = (g.incarnation, max(g.sentAt, beat.sentAt))
            } else {
                t.granted = (beat.incarnation, beat.sentAt)
            }
        }
        records[i] = t
        return Self.reply(state, t.standing, lease: granted)
    }

    /// The next state to persist, or nil if nothing is to change or a proposal is in flight.
    /// The caller compare-and-swaps it over ``state``'s epoch and reports the outcome.
    ///
    /// One proposal carries everything ready at `now`: the current epoch's reported first seq,
    /// announced addresses, standbys added and forgotten, every failed or drained member whose
    /// lease ran out (all at once: one epoch, one reconfiguration for simultaneous failures),
    /// and at most one caught-up standby appended as the new tail.
    public mutating func nextProposal(now: UInt64) -> MasterState? {
        observe(now)
        guard proposal == nil, staleness == nil else { return nil }
        let members = 0..<state.configuration.members.count
        let standbys = members.upperBound..<(members.upperBound + state.standbys.count)
        let last = state.epochHistory.count - 1
        let firstSeq = reportedStart.flatMap { $0.epoch == state.epoch && state.epochHistory[last].firstSeq == nil ? $0.firstSeq : nil }

        // Removals: failed members, and drained ones, once their lease ran out.
        var removed: [Int] = []
        var remaining: [Int] = []
        for i in members {
            let t = records[i]
            if (t.leaving || hasFailed(t, now: now)) && now >= t.leaseUntil {
                removed.append(i)
            } else {
                remaining.append(i)
            }
        }
        if !remaining.contains(where: { !records[$0].leaving && holdsAll($0) }) {
            // Never empty, never only members on their way out, never only members that may lack
            // a committed write: the holder of everything most worth keeping stays, and stays —
            // one still in the configuration if there is one, else one of those going.
            let remainingHolders = remaining.filter(holdsAll)
            var candidates = remainingHolders.isEmpty ? members.filter(holdsAll) : remainingHolders
            if candidates.isEmpty { candidates = remaining.isEmpty ? Array(members) : remaining }
            if let keep = keeper(among: candidates, now: now) {
                removed.removeAll { $0 == keep }
                records[keep].leaving = false
            }
        }

        // A join: the most advanced caught-up standby, after a healthy tail that stays. Caught up:
        // its log is a prefix of the chain's (a replaced head's writes that never committed are
        // truncated first), at most the tail's, and within `catchUpLagRecords` of it.
        var joiner: Int?
        var history = state.epochHistory
        if let firstSeq { history[last].firstSeq = firstSeq }
        if let t = members.last, !removed.contains(t), !records[t].leaving, records[t].failure == nil, holdsAll(t),
           records[t].heard.map({ Self.since($0, now) <= failureTimeout / 2 }) == true, let tailSeq = records[t].reported?.seq {
            for j in standbys {
                let s = records[j]
                // Its report counts once it runs the active state, in which it is no member (a
                // node that is not one reports its whole log, and takes no more replication), or
                // if it never ran a configuration: one sent still running a configuration in which
                // it was a member says only what was durable, and more may follow (records it had
                // taken from its predecessor before it learned it had left).
                guard !s.leaving, s.failure == nil, let heard = s.heard, Self.since(heard, now) <= failureTimeout, let reported = s.reported,
                      s.reportedEpoch == 0 || s.reportedEpoch >= state.epoch,
                      EpochHistory(history).isPrefix(reported) else { continue }
                let seq = reported.seq
                // Never ahead of the tail: a member whose successor holds more than it can only
                // have lost records (so it stops); a standby's extra records are still on their
                // way down the chain, or truncated once the history shows they never committed.
                guard seq <= tailSeq && tailSeq - seq <= settings.catchUpLagRecords else { continue }
                if joiner == nil || seq > records[joiner!].reported!.seq { joiner = j }
            }
        }

        var changes = firstSeq != nil || !removed.isEmpty || joiner != nil || !adding.isEmpty
            || catchingUp.count != state.catchingUp.count || catchingUp.keys.contains { !state.catchingUp.contains($0) }
        for i in members.lowerBound..<standbys.upperBound where !changes {
            // A standby to forget, or a new address.
            let t = records[i]
            changes = t.leaving && i >= members.upperBound || t.announced != nil && t.announced != t.address
        }
        guard changes else { return nil }

        var next = state
        if let firstSeq { next.epochHistory[last].firstSeq = firstSeq }
        next.configuration.members = members.filter { !removed.contains($0) }.map { records[$0].next }
        if let joiner { next.configuration.members.append(records[joiner].next) }
        next.catchingUp = Set(next.configuration.members.map(\.id).filter { catchingUp[$0] != nil || $0 == joiner.map { records[$0].id } })
        next.standbys = standbys.filter { !records[$0].leaving && $0 != joiner }.map { records[$0].next }
            + adding.map { records[slots[$0.id]!].next }
            + removed.filter { !records[$0].leaving }.map { records[$0].next }
        if next.configuration.members != state.configuration.members {
            next.configuration.epoch = state.epoch + 1
            next.epochHistory.append(EpochStart(epoch: next.epoch))
        }
        guard next != state else { return nil }
        assert(next.problem() == nil, "proposed a malformed state: \(next.problem()!)")
        proposal = next
        for i in removed { records[i].beingRemoved = true }
        return next
    }

    /// The proposal was persisted (the compare-and-swap succeeded) at `now`: it becomes the
    /// active state. Nodes no longer members or standbys are forgotten.
    public mutating func proposalPersisted(now: UInt64) {
        guard let next = proposal else { preconditionFailure("proposalPersisted without a proposal in flight") }
        observe(now)
        for t in records where t.beingRemoved {
            assert(now >= t.leaseUntil, "\(t.id) removed while its lease still runs")
        }
        let before = state.configuration
        if next.epoch != state.epoch { changes.reconfigurations += 1 }
        for t in records where t.beingRemoved {
            if t.leaving { changes.drains += 1 } else { changes.failovers += 1 }
        }
        changes.joins += next.configuration.members.filter { before.role(of: $0.id) == nil }.count
        for m in next.configuration.members {
            if before.role(of: m.id) == nil {
                catchingUp[m.id] = Barrier(epoch: next.epoch)
            } else if catchingUp[m.id] != nil, before.predecessor(of: m.id) != next.configuration.predecessor(of: m.id) {
                catchingUp[m.id] = Barrier(epoch: next.epoch)
            }
        }
        catchingUp = catchingUp.filter { entry in next.configuration.members.contains { $0.id == entry.key } }
        state = next
        proposal = nil
        adding.removeAll { a in next.standbys.contains { $0.id == a.id } }
        reindex()
        if let start = reportedStart, start.epoch != state.epoch || state.epochHistory.last?.firstSeq != nil {
            reportedStart = nil
        }
    }

    /// The proposal was not persisted (the compare-and-swap failed): it is dropped, and
    /// ``nextProposal(now:)`` proposes again from the active state.
    public mutating func proposalFailed() {
        proposal = nil
        reindex()
    }

    /// The master's timer fired at `now`: nothing arrived, but the master is running. Only time
    /// passes (``nextProposal(now:)``, which the master calls on every tick, does this too).
    public mutating func tick(now: UInt64) {
        observe(now)
    }

    // MARK: - Operator requests

    /// An operator adds `id` at `address`: it becomes a standby with the next proposal, joins
    /// once caught up. Adding a known node again at the same address does nothing.
    ///
    /// Refused (``CatenaError/Code/invalidArgument``): an address peers cannot connect to
    /// (not `HOST:PORT`, a wildcard host, port 0), a known node at another address, a node being
    /// removed; anything while the state is stale (``CatenaError/Code/staleEpoch``).
    public mutating func addNode(_ id: NodeID, address: String) throws(CatenaError) {
        if let staleness { throw staleness.error(state: state) }
        guard Self.isConnectable(address) else {
            throw CatenaError(.invalidArgument, "'\(address)' is not an address peers can connect to (HOST:PORT, not a wildcard host, not port 0)")
        }
        if let i = slots[id] {
            guard !records[i].leaving else {
                throw CatenaError(.invalidArgument, "\(id) is being removed; add it again once it is gone")
            }
            let current = records[i].next.address
            guard current == address else {
                throw CatenaError(.invalidArgument, "\(id) is already known at \(current), not at \(address)")
            }
            return
        }
        adding.append(ChainMember(id: id, address: address))
        reindex()
    }

    /// An operator removes `id`. A standby (or a node being added) is forgotten with the next
    /// proposal. A member is drained: it gets no more leases, and the first proposal after its
    /// lease ran out removes it; then it is forgotten, so its heartbeats get
    /// ``Standing/unknown`` and it stops. Removing a node already leaving does nothing.
    ///
    /// Refused: a node neither member nor standby (``CatenaError/Code/notFound``); the last
    /// member not leaving, one whose remaining members have all failed at `now`, or the last
    /// member known to hold every committed write while others catch up
    /// (``CatenaError/Code/invalidArgument``); anything while the state is stale
    /// (``CatenaError/Code/staleEpoch``, see ``staleness``).
    public mutating func removeNode(_ id: NodeID, now: UInt64) throws(CatenaError) {
        observe(now)
        if let staleness { throw staleness.error(state: state) }
        guard let i = slots[id], records[i].standing != .unknown else {
            throw CatenaError(.notFound, "\(id) is neither a member nor a standby of chain \(state.chainID)")
        }
        let members = 0..<state.configuration.members.count
        if i >= members.upperBound + state.standbys.count {
            // Being added: never mind; if the proposal in flight adds it, forget it after.
            adding.removeAll { $0.id == id }
            records[i].standing = .unknown
            records[i].leaving = true
            reindex()
            return
        }
        guard members.contains(i), !records[i].leaving else {
            records[i].leaving = true
            return
        }
        let others = members.filter { $0 != i && !records[$0].leaving }
        guard !others.isEmpty else {
            throw CatenaError(.invalidArgument, "\(id) is the last member of chain \(state.chainID): removing it would leave the chain without members")
        }
        guard others.contains(where: { !hasFailed(records[$0], now: now) }) else {
            throw CatenaError(.invalidArgument, "every other member of chain \(state.chainID) has failed: removing \(id) would leave the chain without a live member")
        }
        guard !holdsAll(i) || others.contains(where: holdsAll) else {
            let joiners = others.map { records[$0].id.rawValue }.joined(separator: ", ")
            throw CatenaError(.invalidArgument, "\(id) is the only member of chain \(state.chainID) known to hold every committed write (\(joiners) \(others.count == 1 ? "is" : "are") still catching up): removing it now could lose acknowledged writes; remove it once \(joiners) caught up")
        }
        records[i].leaving = true
    }

    // MARK: - Status

    /// Every node the master knows at `now`: members in chain order, then standbys, then nodes
    /// being added.
    public func status(now: UInt64) -> [NodeReport] {
        let members = state.configuration.members.count
        let top = records[..<members].compactMap { $0.reported?.seq }.max()
        return records.indices.filter { records[$0].standing != .unknown }.map { i in
            let t = records[i]
            let member = i < members
            return NodeReport(
                id: t.id, address: t.address, role: member ? state.configuration.role(of: t.id) : nil,
                standing: t.standing, health: health(t, member: member, now: now),
                highestLSN: t.reported, lag: top.flatMap { top in t.reported.map { top > $0.seq ? top - $0.seq : 0 } },
                sinceHeartbeat: t.heard.map { Self.since($0, now) },
                leaseRemaining: member ? leaseRemaining(t, now: now) : nil, failure: t.failure)
        }
    }

    /// Whether the chain can serve at `now`, or will once failed members are replaced: a member
    /// known to hold every committed write (not catching up) is alive. False: it waits for such a
    /// member to come back — no standby, and no member still catching up, can restore it.
    public func isAvailable(now: UInt64) -> Bool { unavailableReason(now: now) == nil }

    /// Why the chain cannot serve at `now` and what it waits for, or nil if it can (see
    /// ``isAvailable(now:)``).
    public func unavailableReason(now: UInt64) -> String? {
        if let staleness { return staleness.error(state: state).message }
        let members = state.configuration.members.indices
        let holders = members.filter(holdsAll)
        guard !holders.contains(where: { !hasFailed(records[$0], now: now) }) else { return nil }
        func names(_ indices: [Int]) -> String { indices.map { records[$0].id.rawValue }.joined(separator: ", ") }
        let joiners = members.filter { !holdsAll($0) }
        if joiners.isEmpty {
            return "every member has failed (\(names(holders))): the chain waits for one of them to come back; a node removed earlier holds stale data and cannot restore it"
        }
        return "every member known to hold all committed writes (\(names(holders))) has failed, and \(names(joiners)) may lack some (still catching up): the chain waits for \(names(holders)) to come back"
    }

    // MARK: - Internals

    /// The answer to `node`'s heartbeat from the active state as it is now, for a heartbeat
    /// whose ``heartbeat(_:now:)`` granted `granted` and after which a proposal was persisted (or
    /// the master reloaded its state): the node's standing in the new state, and the lease only
    /// if it is still a member that may hold one. Refused like a heartbeat while the state is
    /// stale (``staleness``).
    public func reply(to node: NodeID, granted: Duration?) throws(CatenaError) -> Reply {
        if let staleness { throw staleness.error(state: state) }
        guard let i = slots[node], records[i].standing != .unknown else { return Self.reply(state, .unknown, lease: nil) }
        let t = records[i]
        let leased = t.standing == .member && !t.leaving && !t.beingRemoved && t.failure == nil && catchingUp[node] == nil
        return Self.reply(state, t.standing, lease: leased ? granted : nil)
    }

    private static func reply(_ state: MasterState, _ standing: Standing, lease: Duration?) -> Reply {
        Reply(configuration: state.configuration, history: state.epochHistory, standing: standing, lease: lease)
    }

    /// Rebuilds ``records`` from the active state and ``adding``, keeping what it knew of each
    /// node: members, standbys, nodes being added, and — while a proposal is in flight — the
    /// nodes to forget once it persists. Only members keep a lease; members the proposal in
    /// flight drops are being removed.
    private mutating func reindex() {
        var rebuilt: [Tracked] = []
        let proposed = proposal.map { Set($0.configuration.members.map(\.id)) }
        func keep(_ m: ChainMember, _ standing: Standing) {
            var t = slots[m.id].map { records[$0] } ?? Tracked(id: m.id, address: m.address, standing: standing)
            t.address = m.address
            t.standing = standing
            t.beingRemoved = standing == .member && proposed.map { !$0.contains(m.id) } ?? false
            if standing != .member { t.leaseUntil = 0 }
            rebuilt.append(t)
        }
        for m in state.configuration.members { keep(m, .member) }
        for s in state.standbys { keep(s, .joining) }
        for a in adding { keep(a, .joining) }
        if proposal != nil { rebuilt += records.filter { $0.standing == .unknown } }
        records = rebuilt
        slots = [:]
        for (i, t) in rebuilt.enumerated() { slots[t.id] = i }
    }

    /// Time passes to `now`. A gap since the previous event longer than the pause threshold was
    /// the master's own pause: members are not blamed for it — their silence counts from `now`,
    /// as after a restart — and every member not being removed is held leased for one lease from
    /// `now`, since a removal must wait for any lease the master may have granted.
    private mutating func observe(_ now: UInt64) {
        if now > lastEvent && now - lastEvent > pauseThreshold {
            lastPause = Pause(resumedAt: now, length: now - lastEvent)
            attentiveSince = now
            for i in state.configuration.members.indices where !records[i].beingRemoved {
                records[i].leaseUntil = max(records[i].leaseUntil, Self.plus(now, lease))
            }
        }
        lastEvent = max(lastEvent, now)
    }

    /// Nanoseconds until the lease of member `t` runs out at `now` (held for one lease from a
    /// resume at `now`, as the next event will), nil if none.
    private func leaseRemaining(_ t: Tracked, now: UInt64) -> UInt64? {
        let resumed = attentive(at: now) == now && now > lastEvent && !t.beingRemoved
        let until = resumed ? max(t.leaseUntil, Self.plus(now, lease)) : t.leaseUntil
        return until > now ? until - now : nil
    }

    /// Since when the master has been watching at `now`: its start or last resume — or `now`, if
    /// no event has come for longer than the pause threshold (a query between a resume and the
    /// first event after it sees what that event will make of it).
    private func attentive(at now: UInt64) -> UInt64 {
        now > lastEvent && now - lastEvent > pauseThreshold ? now : attentiveSince
    }

    /// Takes the current head's report of the current epoch's first seq, if it may be recorded.
    private mutating func take(_ start: EpochStart) {
        guard start.epoch == state.epoch, let first = start.firstSeq, first >= 1, state.epochHistory.last?.firstSeq == nil else { return }
        reportedStart = start
    }

    /// Whether the node has failed at `now`: it reports a failure, or has had no heartbeat for
    /// longer than the failure timeout.
    private func hasFailed(_ t: Tracked, now: UInt64) -> Bool {
        t.failure != nil || t.silence(at: now, since: attentive(at: now)) > failureTimeout
    }

    private func health(_ t: Tracked, member: Bool, now: UInt64) -> Health {
        if member {
            if hasFailed(t, now: now) { return .failed }
            if t.leaving { return .leaving }
            return t.silence(at: now, since: attentive(at: now)) > failureTimeout / 2 ? .suspect : .healthy
        }
        if t.leaving { return .leaving }
        return t.heard != nil && !hasFailed(t, now: now) ? .joining : .failed
    }

    /// Which member (its index in chain order) to keep of `candidates` when every member would
    /// go or only drained ones would stay: a live one before a failed one, then the highest
    /// reported LSN, then the later in chain order (the tail side).
    private func keeper(among candidates: [Int], now: UInt64) -> Int? {
        candidates.max { a, b in
            (hasFailed(records[a], now: now) ? 0 : 1, records[a].reported ?? .zero, a)
                < (hasFailed(records[b], now: now) ? 0 : 1, records[b].reported ?? .zero, b)
        }
    }

    /// Whether `id` joined and has not yet shown it holds what its predecessor held: it gets no
    /// lease until then, no standby joins behind it, and it never remains the only kind of
    /// member left.
    public func isCatchingUp(_ id: NodeID) -> Bool { catchingUp[id] != nil }

    /// Whether the member at `i` in ``records`` holds every committed write: it is not catching
    /// up, and it has not reported that its log lost records it had made durable (a
    /// `corruption` failure: a disk that lied, a data directory restored from an old backup). A
    /// node stopped by an I/O error or a full disk still holds what it made durable.
    private func holdsAll(_ i: Int) -> Bool {
        catchingUp[records[i].id] == nil && records[i].failure?.code != .corruption
    }

    /// Whether peers can connect to `address`: `HOST:PORT`, not a wildcard host, not port 0.
    static func isConnectable(_ address: String) -> Bool {
        (try? Address(parsing: address)).map { !$0.isWildcard && $0.port != 0 } ?? false
    }

    private static func nanoseconds(_ d: Duration) -> UInt64 { UInt64(max(0, d.nanosecondsClamped)) }
    fileprivate static func since(_ then: UInt64, _ now: UInt64) -> UInt64 { now >= then ? now - then : 0 }
    private static func plus(_ t: UInt64, _ d: UInt64) -> UInt64 {
        let (sum, overflow) = t.addingReportingOverflow(d)
        return overflow ? .max : sum
    }
}
