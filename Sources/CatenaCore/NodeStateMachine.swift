/// Every rule a storage node keeps in its chain, as one pure state machine: the replica protocol
/// (a ``ReplicaStateMachine`` inside), and around it what makes a node safe in a changing
/// chain — the configuration it adopts (newer epochs only, persisted before adopted), its lease,
/// the head's gates (its successor's position, its epoch's recorded start, its lease, the
/// uncommitted-bytes bound), the read gate (lease, the joined member's read target), rejoining
/// (truncation by the epoch history, catch-up from the tail, a full copy when the tail cannot
/// continue this log), drain and fail-stop.
///
/// Events in, ``Action``s out; no I/O, no clock reads: `now` is the node's monotonic clock in
/// nanoseconds (leases) and `wallClock` the head's wall clock (record timestamps), both passed
/// in. One interpreter (the node's `Replica` actor, or the whole-cluster simulation) performs
/// the actions in order and feeds back what the slow ones produce (``logLoaded(end:recentRequests:)``,
/// ``truncated(end:removed:)``, ``configurationPersisted(epoch:)``, ``catchUpFailed(_:)``).
///
/// ```
///            configuration (member)                 drain
/// unconfigured ───────────────────────► member ─────────────► draining
///      │                                 ▲  │
///      │ configuration (joining)          │  │ removed from the chain / log holds
///      ▼                       appended  │  ▼ writes the chain never committed
///   joining ────────────────────────► rebuilding (truncate, read the log)
///      (wait for the epoch start, truncate, copy from the tail, discard for a full copy)
///
///   any state ── the local log fails ──► failed (reported in every heartbeat)
/// ```
public struct NodeStateMachine: Sendable {
    /// Bounds and waits.
    public struct Settings: Hashable, Sendable {
        /// Bytes of writes the head holds uncommitted before new writes wait: the memory bound
        /// on a slow chain (a middle node never holds more than its head let in).
        public var maxUncommittedBytes: Int = 16 << 20
        /// The replica protocol's bounds.
        public var limits = ReplicaStateMachine.Limits()
        /// How long a joining node waits for the current epoch's first seq (its head reports it
        /// within a heartbeat) before it truncates by the history it has.
        public var epochStartWait: UInt64 = 2_000_000_000
        /// The longest pause between two attempts of a failing catch-up.
        public var maxCatchUpBackoff: UInt64 = 1_000_000_000

        /// The defaults above.
        public init() {}
    }

    /// Where the node is in its life.
    public enum State: Hashable, Sendable {
        /// No configuration from the master yet.
        case unconfigured
        /// Not a member of the chain: it truncates what the chain does not share and copies
        /// from the tail until the master appends it.
        case joining(JoinPhase)
        /// Between roles: the log is being truncated to what the chain shares, or read (its end
        /// and recent request ids) to build a fresh replica machine.
        case rebuilding
        /// A member serving in its role.
        case member
        /// Shutting down: takes no new writes; writes already taken may still commit.
        case draining
        /// The local log failed: takes nothing until restarted, and says so in its heartbeats.
        case failed(CatenaError)
    }

    /// A joining node's progress.
    public enum JoinPhase: Hashable, Sendable {
        /// Waiting (until the node's clock reaches `until`) for the master to record where the
        /// current epoch starts: it decides which of this log's last records the chain shares.
        case waitingForEpochStart(until: UInt64)
        /// Truncating the log after the last record it shares with the chain.
        case truncating
        /// Copying from `source` (the tail), following it until appended.
        case copying(from: ChainMember, fullCopy: Bool)
        /// Discarding the whole log: the tail cannot continue it; then a copy from zero.
        case discarding(fullCopy: Bool)
    }

    /// Where the master says the node stands.
    public enum Standing: Hashable, Sendable {
        /// A member of the configuration.
        case member
        /// Known but not a member: catching up, to be appended as the tail.
        case joining
        /// Not known: never added, or removed by an operator.
        case unknown
    }

    /// The master's answer to a heartbeat.
    public struct Reply: Hashable, Sendable {
        /// The master's active configuration.
        public var configuration: ChainConfiguration
        /// Where this node stands.
        public var standing: Standing
        /// The lease granted, counted from when the heartbeat was sent; nil: none.
        public var lease: Duration?
        /// The chain's epoch history.
        public var history: EpochHistory

        /// Creates a reply.
        public init(configuration: ChainConfiguration, standing: Standing, lease: Duration?, history: EpochHistory) {
            self.configuration = configuration
            self.standing = standing
            self.lease = lease
            self.history = history
        }
    }

    /// What the node's connection handlers need without asking the machine: published with
    /// ``Action/publish(_:)`` whenever it changes.
    public struct View: Hashable, Sendable {
        /// The configuration the node runs (nil before the first).
        public var configuration: ChainConfiguration?
        /// Its role in it; nil when not a member (or between roles).
        public var role: ChainRole?
        /// Where the master says it stands.
        public var standing: Standing?
        /// Why the node stopped, if its log failed.
        public var failure: CatenaError?
        /// Until when (node clock, ns) it may serve clients; nil: no lease.
        public var leaseExpiry: UInt64?
        /// Appended to the chain and not yet holding everything committed before: no reads.
        public var readsBlocked = false
        /// A head (re)built over its log whose successor has not yet reported its position: no
        /// reads. A log restored from an old backup lacks records the chain committed, and the
        /// successor's report is what shows it (the node then stops) — until then a read could
        /// find a key absent that the chain holds.
        public var readsWaitForSuccessor = false
        /// Shutting down.
        public var draining = false

        /// An empty view: no configuration, no role, no lease.
        public init() {}

        /// The epoch of ``configuration`` (0 before the first).
        public var epoch: UInt64 { configuration?.epoch ?? 0 }

        /// Whether the lease is valid at `now`.
        public func leaseValid(at now: UInt64) -> Bool { leaseExpiry.map { now < $0 } ?? false }

        /// Throws unless this node may answer a read in `mode` at `now`: it is a member — the
        /// tail (or the single member) for ``ReadMode/tail`` — whose lease holds, which has not
        /// failed, and which is not a just-joined member still short of what was committed
        /// before it joined. Check again with ``checkLease(at:me:)`` after reading the store: a
        /// pause between the two, of any length, then fails the second check. Then ask
        /// ``committedVersionSource(mode:version:committed:)`` whether the version read may be
        /// served.
        ///
        /// Why a lease makes a member's answers current: the master removes a member only once
        /// the lease it last granted it ran out, so a member holding a lease is a member of the
        /// master's active configuration or of the one before it, and no write commits in a
        /// configuration without passing through every member above its tail — this node
        /// among them.
        public func checkReads(_ mode: ReadMode = .tail, at now: UInt64, me: NodeID) throws(CatenaError) {
            guard let role else {
                throw CatenaError(.redirect, "\(me) is not in the chain at epoch \(epoch); ask the master")
            }
            guard role.answersReads || mode != .tail else {
                let tail = configuration?.tail.map { "\($0.id) at \($0.address)" } ?? "unknown"
                throw CatenaError(.redirect, "reads go to the tail: \(tail)")
            }
            guard failure == nil else {
                throw CatenaError(.unavailable, "\(me) stopped (its log failed); it serves no reads")
            }
            try checkLease(at: now, me: me)
            guard !readsBlocked else {
                throw CatenaError(.unavailable, "\(me) joined the chain and is still receiving writes committed before; retry shortly")
            }
            guard !readsWaitForSuccessor else {
                throw CatenaError(.unavailable, "\(me) waits for its successor to report its position before it answers reads; retry shortly")
            }
        }

        /// Whether a read in mode ``ReadMode/any`` of a session that has seen everything through
        /// `session` may be answered by this node, whose log is durable through `applied`: only
        /// once it holds all of that (session guarantees — read-your-writes, monotonic and
        /// consistent-prefix reads — rest on it; the interpreter waits briefly, then sends the
        /// reader elsewhere). Other modes need no session.
        public func holdsSession(_ session: LSN?, mode: ReadMode, applied: LSN) -> Bool {
            guard mode == .any, let session else { return true }
            return applied.seq >= session.seq
        }

        /// After a read in `mode` found `version` as the key's newest durable version here (nil:
        /// the key has no version here, not even a tombstone), given `committed` — what this
        /// node knows is on every replica (``NodeStateMachine/commitWatermark``): nil if that
        /// version may be served as it is, else the member to ask which version of the key is
        /// committed (the tail), whose answer this node then serves from its own store.
        ///
        /// Served as read: any version at the tail or single member (its durable versions are
        /// committed) or in mode ``ReadMode/any``; no version at all (nothing uncommitted is
        /// here either); a version at or below `committed`. The version asked for is one this
        /// node holds: the tail holds nothing its predecessors do not.
        public func committedVersionSource(mode: ReadMode, version: LSN?, committed: LSN) -> ChainMember? {
            guard mode != .any, let role, !role.answersReads, let version, version.seq > committed.seq else { return nil }
            return configuration?.tail
        }

        /// Throws unless the lease holds at `now`.
        public func checkLease(at now: UInt64, me: NodeID) throws(CatenaError) {
            guard leaseValid(at: now) else {
                throw CatenaError(.unavailable, "\(me)'s lease from the master ran out; it serves no reads until renewed")
            }
        }

        /// Throws unless this node may be a catch-up source: only the tail's durable log is all
        /// committed.
        public func checkCatchUpSource() throws(CatenaError) {
            guard role?.answersReads == true, failure == nil else {
                let tail = configuration?.tail.map { "\($0.id) at \($0.address)" } ?? "unknown"
                throw CatenaError(.redirect, "catch-up copies from the tail: \(tail)")
            }
        }
    }

    /// Something worth a line in the node's log, at a level.
    public struct Note: Hashable, Sendable {
        /// How loud.
        public enum Level: Hashable, Sendable { case debug, info, notice, warning, error, critical }
        /// How loud.
        public var level: Level
        /// What happened.
        public var message: String

        /// Creates a note.
        public init(_ level: Level, _ message: String) {
            self.level = level
            self.message = message
        }
    }

    /// What the interpreter must do, in order. Actions marked *slow* end with an event fed back.
    public enum Action: Hashable, Sendable {
        /// The replica protocol's actions: append (synchronously, before the next event),
        /// forward, resend, acknowledge, answer committed or refused writes.
        case replica(ReplicaStateMachine.Action)
        /// Keep a replication link to this member (make one if there is none to it).
        case connectSuccessor(ChainMember)
        /// Close the replication link, if any.
        case disconnectSuccessor
        /// The successor reported its position on a new connection: drop whatever the link
        /// still queues for the old one (a resend from the log follows).
        case clearSuccessorQueue
        /// Close the predecessor's connection (it reconnects if it is still the predecessor).
        case disconnectPredecessor
        /// Answer every write waiting here with this error.
        case answerAll(CatenaError)
        /// The answer to a write at a head holding too many uncommitted bytes: wait for
        /// ``wakeThrottled``, then ask again.
        case throttled
        /// Writes waiting for room under the uncommitted-bytes bound may try again.
        case wakeThrottled
        /// The view changed.
        case publish(View)
        /// *Slow*: persist what this node has seen (a newer configuration is adopted only once
        /// persisted; a history that learned a first seq is persisted after); then
        /// ``configurationPersisted(epoch:logEnd:now:)``.
        case persistSeen(SeenChain)
        /// *Slow*: truncate the log after the last record it shares with the chain by this
        /// history (``EpochHistory/lastShared(myLastSeq:epochAt:)``), never at or below
        /// `keeping` (records known to be on every replica); then ``truncated(end:removed:)``.
        case truncateToShared(EpochHistory, keeping: LSN)
        /// *Slow*: truncate the whole log; then ``truncated(end:removed:)``.
        case discardLog
        /// *Slow*: read the log's end and the request ids of its records within the request
        /// window; then ``logLoaded(end:recentRequests:)``.
        case loadLog
        /// Start copying from `from` (the tail) after `after` ns, following it until stopped;
        /// a failure is reported with ``catchUpFailed(_:)``.
        case startCatchUp(from: ChainMember, fullCopy: Bool, after: UInt64)
        /// Stop the catch-up, if one runs, and wait until it has (what it installed is durable).
        case stopCatchUp
        /// The master no longer knows this node (an operator removed it): shut down.
        case stop
        /// The master does not know this node yet: wait for an operator to add it.
        case awaitAdding
        /// Worth logging.
        case note(Note)
    }

    /// Counters, for metrics and tests.
    public struct Counters: Hashable, Sendable {
        /// Writes committed with this node as head.
        public var writesCommitted = 0
        /// Writes refused (redirect, invalid, busy, failure).
        public var writesRefused = 0
        /// Writes that waited for room under the uncommitted-bytes bound.
        public var writesThrottled = 0
        /// Records applied from the predecessor.
        public var recordsReplicated = 0
        /// The most uncommitted bytes the head ever held.
        public var peakUncommittedBytes = 0
        /// Records removed by truncations (writes the chain never committed, and discarded logs).
        public var recordsTruncated = 0
        /// Configurations refused as older than one already seen.
        public var staleConfigurationsRefused = 0
        /// Request ids forgotten inside the request window by replica machines since dropped
        /// (the current one's are ``ReplicaStateMachine/requestsForgottenEarly``).
        public var requestsForgottenEarlyBefore = 0
    }

    /// This node.
    public let me: NodeID
    /// Bounds and waits.
    public let settings: Settings
    /// Where the node is.
    public private(set) var state: State = .unconfigured
    /// The replica protocol, while the node has a role (member or draining).
    public private(set) var replica: ReplicaStateMachine?
    /// The latest configuration adopted (persisted first).
    public private(set) var configuration: ChainConfiguration?
    /// The highest configuration this node has persisted as seen: it adopts nothing older, and
    /// nothing of the same epoch with other members.
    public private(set) var highestSeen: ChainConfiguration?
    /// The chain's epoch history, as of the last reply.
    public private(set) var history = EpochHistory([])
    /// What the view shows.
    public private(set) var view = View()
    /// Counters.
    public private(set) var counters = Counters()

    /// Whether the current successor has reported its position since it became the successor.
    /// The head takes no writes before: a successor holding records this log lacks (a log that
    /// lost data) must be found before an LSN could be handed out twice.
    public private(set) var successorPositionKnown = false
    /// Appended: the LSN whose durability here unblocks reads (``readTarget(_:from:)``).
    private var readTarget: LSN?
    /// A reply whose configuration waits to be persisted before it is adopted.
    private var unpersisted: (reply: Reply, sentAt: UInt64)?
    /// The configuration being persisted, if any (newer than ``highestSeen``, or the same with a
    /// history that knows more).
    private var persisting: ChainConfiguration?
    /// How many first seqs the persisted history knows.
    private var persistedStarts = 0
    /// The log's end and recent request ids, known at start-up (used by the first member build).
    private var loaded: (end: LSN, requests: [ReplicaStateMachine.RememberedRequest])?
    /// The master has known this node (a member or standby): if it forgets it, the node stops.
    private var known = false
    /// Told it is unknown and said so (once).
    private var saidUnknown = false
    /// The latest send time (node clock) of a heartbeat that said this node holds no lease:
    /// replies to heartbeats sent before it grant none (see ``reportLeaseless(sentAt:)``).
    private var leaselessSince: UInt64?
    /// Writes waiting for room under the uncommitted-bytes bound.
    private var throttled = 0
    /// The pause before the next catch-up attempt after a failure.
    private var catchUpBackoff: UInt64 = 20_000_000
    /// The joining node's clock when it started waiting for the epoch start.
    private var lastNow: UInt64 = 0

    /// Creates the machine at start-up, over a log that ends at `logEnd` (all of it durable)
    /// whose last records carry `recentRequests` (in LSN order), having persisted `seen`.
    public init(me: NodeID, settings: Settings = Settings(), logEnd: LSN, recentRequests: [ReplicaStateMachine.RememberedRequest],
                seen: SeenChain?) {
        self.me = me
        self.settings = settings
        self.loaded = (logEnd, recentRequests)
        self.highestSeen = seen?.configuration
        self.history = seen?.history ?? EpochHistory([])
        self.persistedStarts = seen?.knownStarts ?? 0
    }

    // MARK: - Queries

    /// The epoch start the head of the current epoch must report before its first write there
    /// (nil: none to report).
    ///
    /// Reported only once the whole log is durable — the records it continues from must survive
    /// a crash, or the epoch would start above the log's end — and once the successor has
    /// reported its position: a head whose log lost records its successor holds (a data
    /// directory restored from an old backup) would otherwise record a start below them, and
    /// every member would truncate those committed records by the history. (Found by the
    /// simulation, restoring a head's data from an old backup.)
    public var epochStartToReport: EpochStart? {
        guard let replica, replica.role?.takesWrites == true, failure == nil, replica.durable == replica.lastAccepted,
              successorPositionKnown || replica.configuration.successor(of: me) == nil,
              history.firstSeq(of: replica.configuration.epoch) == nil else { return nil }
        return EpochStart(epoch: replica.configuration.epoch, firstSeq: replica.lastAccepted.seq + 1)
    }

    /// The LSN a heartbeat reports, given the local log's durable end and its last record.
    ///
    /// A member of the configuration it runs reports what is durable: the master counts that as
    /// held (who holds every committed write, a joiner's barrier). A node that is no member of
    /// it reports its whole log, durable or not: records it took as a member just before it
    /// learned it had left may become durable after, and the master appends a standby only if
    /// its log is at most the tail's — a standby appended behind a tail lacking them would show
    /// a successor holding more than its predecessor, which the predecessor takes for its own
    /// log having lost records (seed 351899). It takes no more replication, so its log grows
    /// only by copies from the tail.
    public func positionToReport(durable: LSN, logEnd: LSN) -> LSN {
        guard let configuration, configuration.role(of: me) == nil, failure == nil else { return durable }
        return logEnd
    }

    /// Why the node stopped taking writes and replication, if it did: heartbeats say so, so the
    /// master replaces it.
    public var failure: CatenaError? {
        if case .failed(let error) = state { return error }
        return nil
    }

    /// The epoch of the configuration the node runs (0: none yet).
    public var epoch: UInt64 { configuration?.epoch ?? 0 }

    /// Whether the heartbeat sent at `sentAt` (node clock) says this node holds no lease: it
    /// serves no reads and takes no writes from then until a reply to a later heartbeat grants
    /// one. A member the master is removing gets no renewals, so it stops serving within a
    /// heartbeat; on this word the master reconfigures the chain at once instead of waiting for
    /// the lease to run out (a drain takes a heartbeat or two, not a lease). Call it once per
    /// heartbeat, as it is sent.
    public mutating func reportLeaseless(sentAt: UInt64) -> Bool {
        guard !view.leaseValid(at: sentAt) else { return false }
        leaselessSince = max(leaselessSince ?? 0, sentAt)
        return true
    }

    /// The epoch a heartbeat names: the one the node runs, or — until it runs one, after a
    /// restart — the highest it has persisted as seen. A master whose state is older than that
    /// finds out at once that it was restored from an old backup, before it could hand out or
    /// build on an older configuration.
    public var heartbeatEpoch: UInt64 { max(epoch, highestSeen?.epoch ?? 0) }

    /// What to tell the predecessor `node` first when it connects — the last LSN here, the last
    /// acknowledged, the epoch — or nil if it is not this node's predecessor (it is refused).
    public func upstreamStart(for node: NodeID) -> (position: LSN, acknowledged: LSN, epoch: UInt64)? {
        guard let replica, failure == nil, replica.configuration.predecessor(of: me)?.id == node else { return nil }
        return (replica.lastAccepted, replica.acknowledged, replica.configuration.epoch)
    }

    /// The last LSN accepted here: what a new successor must hold before it answers reads.
    public var lastAccepted: LSN? { replica?.lastAccepted }

    /// What this node may take as on every replica — the commit watermark it gives its store,
    /// below which compaction may drop records and truncation never cuts: the replica's
    /// acknowledged LSN if it was acknowledged in the configuration the node runs, else zero.
    ///
    /// Why the epoch: in the configuration it runs, a head acknowledges what its successors
    /// acknowledged, a middle what it holds and its successors acknowledged, a tail what it
    /// holds — committed, so on every replica, whose logs match below it. But a replica machine
    /// built as tail starts at its whole log, and a node appended while its log ran ahead of its
    /// predecessor's holds records of an older epoch that the chain may never commit; it must
    /// truncate them later, which a watermark above them would refuse. (Found by the process
    /// fault-injection test of a head killed ahead of its chain, with the watermark raised every
    /// 30 ms.) After a reconfiguration the watermark waits for the first acknowledgement in the
    /// new epoch.
    public var commitWatermark: LSN {
        guard let replica, failure == nil, replica.acknowledged.epoch == replica.configuration.epoch else { return .zero }
        return replica.acknowledged
    }

    // MARK: - The master

    /// The master answered a heartbeat sent at `sentAt` (node clock); `now` is the node clock,
    /// `logEnd` the local log's last enqueued LSN.
    ///
    /// A configuration older than one this node has seen (or of the same epoch with other
    /// members) is refused: a master restored from an old state must not take the chain back.
    /// A newer one is persisted before it is adopted.
    public mutating func heartbeatReplied(_ reply: Reply, sentAt: UInt64, logEnd: LSN, now: UInt64) -> [Action] {
        lastNow = max(lastNow, now)
        if reply.standing == .unknown {
            return masterDoesNotKnowMe()
        }
        known = true
        saidUnknown = false
        if let seen = persisting ?? highestSeen, let refusal = refusal(of: reply.configuration, seen: seen) ?? refusal(of: reply.history) {
            counters.staleConfigurationsRefused += 1
            return [.note(Note(.error, refusal))]
        }
        if highestSeen.map({ reply.configuration.epoch > $0.epoch }) ?? true {
            unpersisted = (reply, sentAt)
            guard persisting == nil else { return [] }
            return persist(reply.configuration, reply.history)
        }
        return apply(reply, sentAt: sentAt, logEnd: logEnd, now: now) + persistHistoryIfItGrew()
    }

    private mutating func persist(_ configuration: ChainConfiguration, _ history: EpochHistory) -> [Action] {
        persisting = configuration
        let seen = SeenChain(configuration: configuration, history: history)
        persistedStarts = max(persistedStarts, seen.knownStarts)
        return [.persistSeen(seen)]
    }

    /// A history that learned where an epoch starts is persisted too (after it is adopted: a
    /// node that loses it in a crash relearns it from the master).
    private mutating func persistHistoryIfItGrew() -> [Action] {
        guard persisting == nil, let seen = highestSeen, history.entries.count(where: { $0.firstSeq != nil }) > persistedStarts else { return [] }
        return persist(seen, history)
    }

    /// The configuration of `epoch` is persisted as seen: adopt the reply that waited for it (or
    /// persist a newer one that arrived meanwhile first).
    public mutating func configurationPersisted(epoch: UInt64, logEnd: LSN, now: UInt64) -> [Action] {
        guard let done = persisting, done.epoch == epoch else { return [] }
        persisting = nil
        highestSeen = done
        guard let waiting = unpersisted else { return persistHistoryIfItGrew() }
        if waiting.reply.configuration.epoch > done.epoch {
            return persist(waiting.reply.configuration, waiting.reply.history)
        }
        unpersisted = nil
        return apply(waiting.reply, sentAt: waiting.sentAt, logEnd: logEnd, now: now) + persistHistoryIfItGrew()
    }

    /// Time passed (the heartbeat loop calls this every interval).
    public mutating func tick(now: UInt64) -> [Action] {
        lastNow = max(lastNow, now)
        if case .joining(.waitingForEpochStart(let until)) = state, now >= until {
            return [.note(Note(.notice, "the current epoch's first seq is still unknown; truncating by the history as it is"))] + truncateForJoin()
        }
        return []
    }

    private func refusal(of configuration: ChainConfiguration, seen: ChainConfiguration) -> String? {
        if configuration.epoch < seen.epoch {
            return "refusing the master's configuration of epoch \(configuration.epoch): this node has seen epoch \(seen.epoch) (a master restored from an old state, or a second master?)"
        }
        if configuration.epoch == seen.epoch && configuration.members != seen.members {
            return "refusing the master's configuration of epoch \(configuration.epoch): this node has seen epoch \(seen.epoch) with other members (\(seen.members.map(\.id.rawValue)) vs \(configuration.members.map(\.id.rawValue)))"
        }
        return nil
    }

    /// A history that forgets or moves where an epoch started, as this node knows it: the
    /// master's state went back (restored from a backup taken before that start was recorded).
    /// Adopting it would make members truncate committed writes.
    private func refusal(of other: EpochHistory) -> String? {
        for known in history.entries {
            guard let first = known.firstSeq, other.firstSeq(of: known.epoch) != first else { continue }
            return "refusing the master's epoch history: it says epoch \(known.epoch) starts at \(other.firstSeq(of: known.epoch).map { "\($0)" } ?? "an unknown seq"), this node knows it starts at \(first) (a master state restored from an old backup?)"
        }
        return nil
    }

    private mutating func masterDoesNotKnowMe() -> [Action] {
        if known {
            return [.note(Note(.notice, "the master removed this node from the chain; stopping")), .stop]
        }
        guard !saidUnknown else { return [] }
        saidUnknown = true
        return [.awaitAdding]
    }

    /// Adopts `reply` (its configuration is persisted as seen, or older than one persisted).
    private mutating func apply(_ reply: Reply, sentAt: UInt64, logEnd: LSN, now: UInt64) -> [Action] {
        if reply.history.entries.count >= history.entries.count { history = reply.history }
        let new = reply.configuration
        if configuration.map({ new.epoch > $0.epoch }) ?? true { configuration = new }
        let isMember = new.role(of: me) != nil
        var actions: [Action] = []
        view.standing = reply.standing
        // A reply to a heartbeat sent before one that said this node holds no lease grants none:
        // the master may already have reconfigured the chain on that word.
        let granted = reply.standing == .member && leaselessSince.map { sentAt >= $0 } ?? true ? reply.lease : nil
        view.leaseExpiry = granted.map { sentAt &+ Self.nanoseconds($0 - $0 / 20) }

        switch state {
        case .failed:
            break
        case .draining:
            if let replica, new.epoch > replica.configuration.epoch {
                actions += reconfigure(new, leaving: !isMember)
            }
        case .unconfigured:
            if isMember, let loaded {
                actions += rebuild(afterLoading: loaded)
            } else if isMember {
                state = .rebuilding
                actions.append(.loadLog)
            } else if reply.standing == .joining {
                actions += beginJoining(now: now)
            }
        case .rebuilding:
            break  // the configuration in force when the log is read decides
        case .joining(let phase):
            if isMember {
                // Appended: stop copying (what it installed is durable), then build over the log.
                state = .rebuilding
                actions += [.stopCatchUp, .loadLog]
            } else if reply.standing == .joining {
                actions += continueJoining(phase, now: now)
            }
        case .member:
            let replica = self.replica!
            if !history.holds(replica.lastAccepted) {
                // A member whose log holds writes the chain never committed, by the history: a
                // head paused past its lease whose first heartbeat after the pause reported only
                // its durable records (so the master appended it at once), while records enqueued
                // before the pause became durable after; or a member that got the last writes of
                // a head that died before its predecessor did, once the next head's epoch start is
                // recorded below them. It must not serve them nor keep them from its predecessor.
                let committed = commitWatermark
                actions += leaveRole(CatenaError(.redirect, "\(me) is no longer the head; retry with the same request id at the new head, which knows whether it committed"))
                state = .rebuilding
                actions.append(.truncateToShared(history, keeping: committed))
            } else if new.epoch > replica.configuration.epoch {
                actions += reconfigure(new, leaving: !isMember)
                if !isMember && reply.standing == .joining {
                    actions += beginJoining(now: now)
                }
            }
        }
        actions += checkEpochStart()
        actions.append(.publish(publishedView()))
        return actions
    }

    /// A head whose log ends below where the history says its epoch starts lost records it had
    /// reported (made durable, then lost to a failed fsync or a disk that lied): writing would
    /// give seqs below the epoch's start this epoch's LSNs, which the history attributes to an
    /// earlier epoch — members would truncate them, acknowledged. It stops instead (its
    /// heartbeats say so, the master replaces it, and it rejoins after a restart).
    private mutating func checkEpochStart() -> [Action] {
        guard let replica, replica.role?.takesWrites == true, failure == nil,
              let first = history.firstSeq(of: replica.configuration.epoch), replica.lastAccepted.seq + 1 < first else { return [] }
        return logFailed(CatenaError(.corruption, "\(me)'s log ends at \(replica.lastAccepted), below where its epoch \(replica.configuration.epoch) starts (\(first)): it lost records it had reported durable"))
    }

    // MARK: - Roles

    /// Builds a fresh replica machine over a log that ends at `loaded.end`, if its records are a
    /// prefix of the chain's by the history; else truncates first.
    private mutating func rebuild(afterLoading loaded: (end: LSN, requests: [ReplicaStateMachine.RememberedRequest])) -> [Action] {
        self.loaded = nil
        guard let configuration else { return [] }
        guard configuration.role(of: me) != nil else {
            state = .unconfigured
            return view.standing == .joining ? beginJoining(now: lastNow) : []
        }
        guard history.holds(loaded.end) else {
            state = .rebuilding
            return [.truncateToShared(history, keeping: .zero)]
        }
        replica = ReplicaStateMachine(me: me, configuration: configuration, lastLSN: loaded.end,
                                      recentRequests: loaded.requests, limits: settings.limits)
        state = .member
        successorPositionKnown = false
        readTarget = nil
        // A node appended to the chain may lack writes committed just before (its catch-up
        // stopped short of the tail's end), and a restarted one may have lost what it had not
        // made durable: a node with a predecessor answers no reads until its log reaches what
        // the predecessor held when their link started (``readTarget(_:from:)``).
        view.readsBlocked = configuration.predecessor(of: me) != nil
        view.readsWaitForSuccessor = configuration.predecessor(of: me) == nil && configuration.successor(of: me) != nil
        var actions: [Action] = [.note(Note(.notice, "configured at epoch \(configuration.epoch) as \(roleName(configuration)) over a log ending at \(loaded.end)"))]
        actions += links()
        return actions
    }

    /// Runs a newer configuration through the replica machine (a demoted head gives up its
    /// pending writes, a new tail acknowledges what it holds, …) and keeps the links in line.
    /// `leaving`: the node is no longer a member; its machine is dropped.
    private mutating func reconfigure(_ new: ChainConfiguration, leaving: Bool) -> [Action] {
        let old = replica!.configuration
        var actions = replica!.reconfigure(new).map(Action.replica)
        countRefusals(actions)
        if leaving {
            counters.requestsForgottenEarlyBefore += replica!.requestsForgottenEarly
            replica = nil
            if case .member = state { state = .unconfigured }
            successorPositionKnown = false
            readTarget = nil
            view.readsBlocked = false
            view.readsWaitForSuccessor = false
            actions += [.disconnectSuccessor, .disconnectPredecessor]
            actions.append(.note(Note(.notice, "no longer a member at epoch \(new.epoch)")))
            return actions + wake()
        }
        if old.predecessor(of: me) != new.predecessor(of: me) { actions.append(.disconnectPredecessor) }
        if old.successor(of: me) != new.successor(of: me) { successorPositionKnown = false }
        if view.readsWaitForSuccessor && new.successor(of: me) == nil {
            // Nobody left to wait for — as a head without a successor takes writes.
            view.readsWaitForSuccessor = false
        }
        if view.readsBlocked && new.predecessor(of: me) == nil {
            // Its predecessor left before it said what it held, and no other will: the read
            // block would last for good. A member without a predecessor holds every committed
            // write — the master keeps one that holds them all at the head of a chain, and
            // leases a joined member only once it reported what its predecessor held — so
            // the block has nothing left to wait for (every member answers reads since CRAQ).
            readTarget = nil
            view.readsBlocked = false
            // As a head built over its log: not before its successor said where its log ends.
            view.readsWaitForSuccessor = new.successor(of: me) != nil && !successorPositionKnown
            actions.append(.note(Note(.info, "no predecessor at epoch \(new.epoch): serving reads")))
        }
        actions.append(.note(Note(.notice, "reconfigured at epoch \(new.epoch) as \(roleName(new))")))
        return actions + links() + wake()
    }

    /// Gives up the role: pending writes are answered `error` (their clients retry at the new
    /// head, which knows whether they committed), links close.
    private mutating func leaveRole(_ error: CatenaError) -> [Action] {
        counters.requestsForgottenEarlyBefore += replica?.requestsForgottenEarly ?? 0
        replica = nil
        successorPositionKnown = false
        readTarget = nil
        view.readsBlocked = false
        view.readsWaitForSuccessor = false
        return [.answerAll(error), .stopCatchUp, .disconnectSuccessor, .disconnectPredecessor] + wake()
    }

    private func links() -> [Action] {
        guard let replica else { return [.disconnectSuccessor] }
        if let next = replica.configuration.successor(of: me) { return [.connectSuccessor(next)] }
        return [.disconnectSuccessor]
    }

    private func roleName(_ configuration: ChainConfiguration) -> String {
        configuration.role(of: me).map { "\($0)" } ?? "no member"
    }

    // MARK: - Rejoining

    private mutating func beginJoining(now: UInt64) -> [Action] {
        guard let configuration, configuration.tail != nil else { return [] }
        loaded = nil
        catchUpBackoff = 20_000_000
        if history.firstSeq(of: configuration.epoch) == nil {
            // The current epoch's first seq decides whether records of the last epoch are shared;
            // its head reports it within a heartbeat of taking over.
            state = .joining(.waitingForEpochStart(until: now &+ settings.epochStartWait))
            return []
        }
        return truncateForJoin()
    }

    private mutating func truncateForJoin() -> [Action] {
        state = .joining(.truncating)
        return [.truncateToShared(history, keeping: .zero)]
    }

    private mutating func continueJoining(_ phase: JoinPhase, now: UInt64) -> [Action] {
        guard let tail = configuration?.tail else { return [] }
        switch phase {
        case .waitingForEpochStart(let until):
            if history.firstSeq(of: configuration!.epoch) != nil || now >= until { return truncateForJoin() }
            return []
        case .copying(let source, let fullCopy) where source != tail:
            // The tail changed: copy from the new one.
            state = .joining(.copying(from: tail, fullCopy: fullCopy))
            catchUpBackoff = 20_000_000
            return [.stopCatchUp, .startCatchUp(from: tail, fullCopy: fullCopy, after: 0)]
        case .copying, .truncating, .discarding:
            return []
        }
    }

    /// The slow truncation ended: the log now ends at `end`, `removed` records fewer.
    public mutating func truncated(end: LSN, removed: Int) -> [Action] {
        counters.recordsTruncated += removed
        var actions: [Action] = []
        if removed > 0 {
            actions.append(.note(Note(.warning, "truncated \(removed) records the chain never committed (written by a replaced head); the log ends at \(end)")))
        }
        switch state {
        case .joining(.truncating):
            guard let tail = configuration?.tail else { return actions }
            state = .joining(.copying(from: tail, fullCopy: false))
            return actions + [.startCatchUp(from: tail, fullCopy: false, after: 0)]
        case .joining(.discarding(let fullCopy)):
            guard let tail = configuration?.tail else { return actions }
            state = .joining(.copying(from: tail, fullCopy: fullCopy))
            return actions + [.startCatchUp(from: tail, fullCopy: fullCopy, after: 0)]
        case .rebuilding:
            return actions + [.loadLog]
        default:
            return actions
        }
    }

    /// The slow read of the log ended: it ends at `end`, and its last records carry
    /// `recentRequests`.
    public mutating func logLoaded(end: LSN, recentRequests: [ReplicaStateMachine.RememberedRequest]) -> [Action] {
        guard case .rebuilding = state else { return [] }
        return rebuild(afterLoading: (end, recentRequests)) + checkEpochStart() + [.publish(publishedView())]
    }

    /// The catch-up stopped with `error`: the tail cannot continue this log (discard it and
    /// copy everything — all compaction kept, if it has run), the local log failed (fail-stop),
    /// or something to retry after a backoff.
    public mutating func catchUpFailed(_ error: CatenaError) -> [Action] {
        guard case .joining(.copying(let source, let fullCopy)) = state else { return [] }
        switch error.code {
        case .lsnOutOfOrder, .historyCompacted:
            let full = fullCopy || error.code == .historyCompacted
            state = .joining(.discarding(fullCopy: full))
            return [.note(Note(.warning, "the tail \(source.id) cannot continue this log (\(error)); discarding it for a full copy")), .discardLog]
        case .ioFailure, .diskFull, .closed:
            return logFailed(error)
        default:
            let delay = catchUpBackoff
            catchUpBackoff = min(catchUpBackoff * 2, settings.maxCatchUpBackoff)
            return [.note(Note(.info, "catch-up from \(source.id) interrupted (\(error)); resuming")),
                    .startCatchUp(from: source, fullCopy: fullCopy, after: delay)]
        }
    }

    // MARK: - Writes

    /// A client write at `now` (node clock); `wallClock` stamps the record. `admit` is the local
    /// log's check of the encoded record (value size, an incomplete upload), run before the
    /// record gets an LSN; `durableVersion` is the local log's newest durable version of a key,
    /// which a conditional write is checked against when no newer record of the key is in
    /// flight (see ``ReplicaStateMachine/write(_:now:durableVersion:admit:)``).
    ///
    /// The answer: ``Action/replica(_:)`` actions — an append (the write waits for its commit),
    /// a commit (a retry of a committed write), a refusal, or nothing (a retry of a write still
    /// in flight: it waits for that one's commit); or, when the head holds more than
    /// ``Settings/maxUncommittedBytes`` uncommitted, ``Action/throttled``: the caller waits for
    /// ``Action/wakeThrottled`` and asks again.
    public mutating func write(_ request: WriteRequest, now: UInt64, wallClock: UInt64,
                               durableVersion: (Key) throws(CatenaError) -> KeyVersion? = { _ in nil },
                               admit: (EncodedRecord) throws(CatenaError) -> Void = { _ in }) -> [Action] {
        // Every write names its request: waiters, retries and exactly-once hang on the id.
        guard request.requestID != .none else {
            return refuse(request.requestID, CatenaError(.invalidArgument, "a write needs a request id (0 is reserved)"))
        }
        switch state {
        case .failed(let error):
            // The node's failure, not the request's: the master replaces the node; retry there.
            return refuse(request.requestID, CatenaError(.unavailable, "\(me) stopped: its log failed (\(error)); the master replaces it"))
        case .draining:
            return refuse(request.requestID, CatenaError(.unavailable, "\(me) is shutting down"))
        case .member:
            break
        case .unconfigured, .rebuilding, .joining:
            if let configuration, configuration.role(of: me) == nil, let head = configuration.head {
                return refuse(request.requestID, CatenaError(.redirect, "writes go to the head: \(head.id) at \(head.address)"))
            }
            return refuse(request.requestID, CatenaError(.unavailable, "\(me) has no role in the chain yet"))
        }
        if replica!.role?.takesWrites == true {
            let size = RecordHeader.overhead + request.key.bytes.count + request.value.count
            if replica!.uncommittedBytes > 0 && replica!.uncommittedBytes + size > settings.maxUncommittedBytes {
                throttled += 1
                counters.writesThrottled += 1
                return [.throttled]
            }
            let epoch = replica!.configuration.epoch
            if let next = replica!.configuration.successor(of: me), !successorPositionKnown {
                return refuse(request.requestID, CatenaError(.unavailable, "\(me) waits for its successor \(next.id) to report its position"))
            }
            if history.firstSeq(of: epoch) == nil {
                return refuse(request.requestID, CatenaError(.unavailable, "\(me) waits for the master to record where epoch \(epoch) starts"))
            }
            guard view.leaseValid(at: now) else {
                return refuse(request.requestID, CatenaError(.unavailable, "\(me)'s lease from the master ran out; it takes no writes until renewed"))
            }
        }
        // In place (`replica!`): a copy would duplicate the machine's request table per write.
        let actions = replica!.write(request, now: wallClock, durableVersion: durableVersion, admit: admit).map(Action.replica)
        countRefusals(actions)
        counters.peakUncommittedBytes = max(counters.peakUncommittedBytes, replica!.uncommittedBytes)
        return actions
    }

    // MARK: - Replication

    /// Records from `sender` under `epoch`. `admit` is the local log's check of the new ones:
    /// records it would refuse (a value above this node's limit, a broken upload) cost the
    /// connection, not the node; only a failure to write or persist stops the node.
    public mutating func replicate(_ records: [EncodedRecord], epoch: UInt64, from sender: NodeID,
                                   admit: ([EncodedRecord]) throws(CatenaError) -> Void = { _ in }) -> [Action] {
        if let failure { return [.replica(.refuse(nil, failure))] }
        guard replica != nil else {
            return [.replica(.refuse(nil, CatenaError(.epochAhead, "\(me) has no role in the chain yet")))]
        }
        guard replica!.configuration.predecessor(of: me)?.id == sender else {
            return [.replica(.refuse(nil, CatenaError(.protocolViolation, "\(sender) is not \(me)'s predecessor at epoch \(replica!.configuration.epoch)")))]
        }
        let before = replica!.lastAccepted.seq
        do {
            try admit(records.filter { $0.lsn.seq > before })
        } catch where error.code != .ioFailure && error.code != .diskFull && error.code != .closed {
            // The chain cannot pass this node until an operator looks (or the master replaces it).
            return [.note(Note(.error, "refusing records from \(sender) that the local log would not take; replication is stuck here: \(error)")),
                    .replica(.refuse(nil, CatenaError(.protocolViolation, "\(me) cannot take these records: \(error)")))]
        } catch {
            return logFailed(error) + [.replica(.refuse(nil, error))]
        }
        let actions = replica!.replicate(records, epoch: epoch).map(Action.replica)
        counters.recordsReplicated += Int(replica!.lastAccepted.seq - before)
        return actions
    }

    /// The local log made everything through `lsn` durable.
    public mutating func durable(through lsn: LSN) -> [Action] {
        guard replica != nil, failure == nil else { return [] }
        var actions = replica!.durable(through: lsn).map(Action.replica)
        countCommits(actions)
        if let unblock = unblockReadsIfCaughtUp() { actions += unblock }
        return actions + wakeIfCommitted(actions)
    }

    /// The successor `sender` acknowledged everything through `lsn` under `epoch`, and holds its
    /// log durably through `held[0]`, the member after it through `held[1]`, …
    /// (``ReplicaStateMachine/acknowledged(through:held:epoch:)``).
    public mutating func acknowledged(through lsn: LSN, held: [LSN] = [], epoch: UInt64, from sender: NodeID) -> [Action] {
        guard replica != nil, failure == nil, replica!.configuration.successor(of: me)?.id == sender else {
            return [.replica(.refuse(nil, CatenaError(.protocolViolation, "\(sender) is not \(me)'s successor")))]
        }
        let actions = replica!.acknowledged(through: lsn, held: held, epoch: epoch).map(Action.replica)
        countCommits(actions)
        return actions + wakeIfCommitted(actions)
    }

    /// The successor `sender` reports the last LSN in its log on a new connection, under `epoch`.
    public mutating func successorReported(_ lsn: LSN, epoch: UInt64, from sender: NodeID) -> [Action] {
        guard replica != nil, failure == nil, replica!.configuration.successor(of: me)?.id == sender else {
            return [.replica(.refuse(nil, CatenaError(.protocolViolation, "\(sender) is not \(me)'s successor")))]
        }
        let last = replica!.lastAccepted
        let actions = replica!.successorReported(lastLSN: lsn, epoch: epoch).map(Action.replica)
        if actions.contains(where: { if case .replica(.refuse) = $0 { true } else { false } }) {
            successorPositionKnown = false
            if lsn.seq > last.seq {
                // This log lost records it had made durable (and forwarded): it must not hand out
                // their LSNs again, nor keep the chain waiting. It stops, says so in its
                // heartbeats, is replaced, and rejoins after a restart (truncating and copying).
                return actions + logFailed(CatenaError(.corruption, "the successor \(sender) holds records this log lacks (\(lsn) > \(last)): the log lost data it had made durable"))
            }
            return actions
        }
        successorPositionKnown = true
        if view.readsWaitForSuccessor {
            view.readsWaitForSuccessor = false
            return [.clearSuccessorQueue] + actions + [.publish(publishedView())]
        }
        return [.clearSuccessorQueue] + actions
    }

    /// The predecessor `sender` held everything through `lsn` when the link started: once that
    /// is durable here, this node (if it was just appended) holds every committed write.
    public mutating func readTarget(_ lsn: LSN, from sender: NodeID) -> [Action] {
        guard replica?.configuration.predecessor(of: me)?.id == sender, view.readsBlocked else { return [] }
        readTarget = lsn
        return unblockReadsIfCaughtUp() ?? []
    }

    private mutating func unblockReadsIfCaughtUp() -> [Action]? {
        guard let target = readTarget, let replica, replica.durable.seq >= target.seq else { return nil }
        readTarget = nil
        view.readsBlocked = false
        return [.note(Note(.info, "holds everything its predecessor had when it joined (\(target)); serving reads")), .publish(publishedView())]
    }

    // MARK: - Failure and shutdown

    /// The local log failed (a write or fsync error): stop taking writes and replication — a
    /// record the machine accepted but the log lost must never be acknowledged — and say so in
    /// every heartbeat, so the master replaces this node. A restart re-reads the log.
    public mutating func logFailed(_ error: CatenaError) -> [Action] {
        if case .failed = state { return [] }
        state = .failed(error)
        view.failure = error
        // Writes taken here may still commit through the rest of the chain: their outcome is
        // unknown, not failed — the client retries with the same request id at the new head.
        let unknown = CatenaError(.unavailable, "\(me) stopped (its log failed: \(error)); the write may or may not commit: retry with the same request id")
        return [.note(Note(.critical, "local log failed; this node stops taking writes and replication until restarted: \(error)")),
                .answerAll(unknown), .stopCatchUp] + wake() + [.publish(publishedView())]
    }

    /// Shutting down: no new writes; writes already taken may still commit until
    /// ``drainEnded()``.
    public mutating func drain() -> [Action] {
        if case .failed = state { return [.stopCatchUp] }
        state = .draining
        view.draining = true
        return [.stopCatchUp] + wake() + [.publish(publishedView())]
    }

    /// The drain is over (its writes committed, or its time ran out): whatever is left is
    /// answered "unknown" — the client retries with the same request id at whatever head the
    /// chain has then, which knows whether it committed — and the links close.
    public mutating func drainEnded() -> [Action] {
        [.answerAll(CatenaError(.unavailable, "\(me) shut down before the write committed; retry with the same request id")),
         .disconnectSuccessor, .disconnectPredecessor]
    }

    // MARK: - Internals

    private mutating func refuse(_ id: RequestID, _ error: CatenaError) -> [Action] {
        counters.writesRefused += 1
        return [.replica(.refuse(id, error))]
    }

    private mutating func countRefusals(_ actions: [Action]) {
        for case .replica(.refuse(_?, _)) in actions { counters.writesRefused += 1 }
    }

    private mutating func countCommits(_ actions: [Action]) {
        for case .replica(.committed(let commits)) in actions { counters.writesCommitted += commits.count }
    }

    private mutating func wakeIfCommitted(_ actions: [Action]) -> [Action] {
        guard throttled > 0, actions.contains(where: { if case .replica(.committed) = $0 { true } else { false } }) else { return [] }
        return wake()
    }

    private mutating func wake() -> [Action] {
        guard throttled > 0 else { return [] }
        throttled = 0
        return [.wakeThrottled]
    }

    private func publishedView() -> View {
        var v = view
        v.configuration = replica?.configuration ?? configuration
        v.role = replica?.role
        return v
    }

    private static func nanoseconds(_ d: Duration) -> UInt64 { UInt64(max(0, d.nanosecondsClamped)) }
}
