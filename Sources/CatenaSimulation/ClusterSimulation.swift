import CatenaCluster
import CatenaCore
import CatenaMaster
import CatenaTestSupport
import DequeModule

/// What a simulated run does.
public struct SimulationSettings: Hashable, Sendable {
    /// Simulated nanoseconds of faults and load.
    public var chaos: UInt64 = 6_000_000_000
    /// The longest the cluster may take, once every fault is healed, to settle into one chain
    /// whose members agree (beyond it: a liveness violation).
    public var settleLimit: UInt64 = 30_000_000_000
    /// Clients, each running one operation at a time.
    public var clients = 3
    /// Keys the clients share.
    public var keys = 3
    /// Whether the nemesis injects faults (off: a plain run, to measure the harness).
    public var faults = true
    /// The nodes' heartbeat interval.
    public var heartbeatInterval: UInt64 = 100_000_000
    /// The master's failure timeout (and lease).
    public var failureTimeout: UInt64 = 1_000_000_000
    /// The most trace lines a traced run keeps (the last ones).
    public var traceLimit = 600

    /// The defaults above.
    public init() {}
}

/// What a run found.
public struct SimulationResult: Sendable {
    /// The seed: the same seed replays the same run.
    public var seed: UInt64
    /// Broken rules (empty: the run kept every invariant).
    public var violations: [String]
    /// The run's events, when it was traced (the last ones).
    public var trace: [String]
    /// What happened in it.
    public var stats: SimulationStats
}

/// Counts of what a run (or many) exercised.
public struct SimulationStats: Hashable, Sendable, CustomStringConvertible {
    public var runs = 0
    public var kills = 0
    /// Kills of a new head before its first group commit (a targeted fault; counted in `kills` too).
    public var newHeadKills = 0
    public var pauses = 0
    public var masterKills = 0
    public var masterPauses = 0
    public var partitions = 0
    public var syncFailures = 0
    public var diskFulls = 0
    public var staleRestores = 0
    public var nodeRestores = 0
    public var added = 0
    public var removed = 0
    /// Removed members that said they held no lease, so the master did not wait for it.
    public var leasesReleased = 0
    public var reconfigurations = 0
    public var truncations = 0
    public var discards = 0
    public var catchUpRecords = 0
    public var writesAcknowledged = 0
    public var writesUnknown = 0
    /// Conditional writes acknowledged, and refused because their condition did not hold.
    public var conditionalApplied = 0
    public var conditionalRefused = 0
    /// Writes of unknown outcome settled (asked whether they applied, and answered).
    public var writesSettled = 0
    /// Writes acknowledged in a weaker mode (head, or the first two members), and of those the
    /// ones the settled log does not hold: lost, as those modes allow.
    public var weakAcknowledged = 0
    public var weakLost = 0
    public var readsAnswered = 0
    /// Read attempts sent to a member other than the tail (modes linearizable and any), and
    /// reads in mode linearizable whose key was dirty where they arrived, so the member asked
    /// the tail which version is committed.
    public var readsAtOtherMembers = 0
    public var versionQueries = 0
    public var events = 0

    public init() {}

    public mutating func add(_ o: SimulationStats) {
        runs += o.runs; kills += o.kills; newHeadKills += o.newHeadKills; pauses += o.pauses; masterKills += o.masterKills; masterPauses += o.masterPauses
        partitions += o.partitions; syncFailures += o.syncFailures; diskFulls += o.diskFulls; staleRestores += o.staleRestores; nodeRestores += o.nodeRestores; added += o.added
        removed += o.removed; leasesReleased += o.leasesReleased; reconfigurations += o.reconfigurations; truncations += o.truncations; discards += o.discards
        catchUpRecords += o.catchUpRecords; writesAcknowledged += o.writesAcknowledged; writesUnknown += o.writesUnknown
        conditionalApplied += o.conditionalApplied; conditionalRefused += o.conditionalRefused; writesSettled += o.writesSettled
        weakAcknowledged += o.weakAcknowledged; weakLost += o.weakLost
        readsAnswered += o.readsAnswered; readsAtOtherMembers += o.readsAtOtherMembers; versionQueries += o.versionQueries; events += o.events
    }

    public var description: String {
        "runs \(runs), events \(events), kills \(kills) (\(newHeadKills) of new heads before their first group commit), pauses \(pauses), master kills \(masterKills), master pauses \(masterPauses), partitions \(partitions), fsync failures \(syncFailures), disks full \(diskFulls), old master states restored \(staleRestores), nodes restored from old backups \(nodeRestores), added \(added), removed \(removed) (\(leasesReleased) without waiting for the lease), reconfigurations \(reconfigurations), truncations \(truncations), discards \(discards), records copied \(catchUpRecords), writes acknowledged \(writesAcknowledged) (conditional \(conditionalApplied), \(conditionalRefused) more refused by their condition), writes unknown \(writesUnknown) (\(writesSettled) settled), writes acknowledged by the head or the first two members \(weakAcknowledged) (\(weakLost) lost), reads \(readsAnswered) (\(readsAtOtherMembers) by members other than the tail; \(versionQueries) version queries)"
    }
}

/// A deterministic simulation of a whole Catena cluster, in the spirit of FoundationDB's: one
/// thread, one seeded generator, a simulated clock, driving the real pure state machines — the
/// master's ``ChainManager`` and a ``NodeStateMachine`` per node — over a simulated network
/// (ordered connections that break, delay and partition, one-way too), simulated disks (a crash
/// keeps only what was synced plus a prefix of the rest; fsync can fail; disks fill up),
/// clients that retry with request ids and record their histories, and a nemesis that kills,
/// restarts and pauses any process (the master too), partitions, fails disks, adds, removes
/// and drains nodes — several at once, and in the middle of reconfigurations.
///
/// After the faults it heals everything and waits for one settled chain, runs a last round of
/// operations that must succeed, and checks: every key's history is linearizable; every
/// acknowledged write is in every member's log; the members' logs are identical; no LSN ever
/// named two different records on two nodes (checked at every append); no node ever adopted a
/// configuration older than one it had; the master's epochs only grew; every conditional write
/// in the settled log met its condition against its key's version just before it, and none
/// that was refused is in the log.
///
/// What it does not model: the storage engine's files (a node's log is an array with a durable
/// prefix), compaction, the wire codecs, TCP details beyond ordered delivery and breaks, clock
/// drift (every clock runs at the simulated rate), CPU.
public final class ClusterSimulation {
    public let seed: UInt64
    let settings: SimulationSettings
    let tracing: Bool
    var rng: SplitMix64
    /// The targeted faults' own generator: they act on rare moments (see
    /// ``newHeadOverAnUndurableLog(_:)``), and drawing from ``rng`` only there keeps every seed
    /// they leave alone the run it was.
    var targetedRNG: SplitMix64

    var now: UInt64 = 0
    var queue = EventQueue<Event>()
    var nodes: [SimNode] = []
    var master: SimMaster!
    var clients: [SimClient] = []
    var conns: [ReplConn] = []
    var partitions: [Partition] = []
    var phase = Phase.chaos
    /// Every LSN ever appended anywhere, with its record's checksum (DESIGN invariant 8).
    var lsnRegistry: [LSN: UInt64] = [:]
    /// Acknowledged writes: where, which key, which request.
    var acknowledged: [(lsn: LSN, key: Key, request: RequestID)] = []
    /// Writes acknowledged in a weaker mode than all: they may be lost (counted at the end).
    var weakAcknowledged: [(lsn: LSN, key: Key, request: RequestID, ack: AckMode)] = []
    /// Reads in mode any with a session: the newest version of the key the client had written
    /// or read before (`expected`) and the version read (nil: none). A read older than expected
    /// breaks the session's guarantees — unless the expected version was lost (a weak write, or
    /// a version read before it was committed), which the final check asks of the settled log.
    var sessionReads: [(client: Int, key: Key, expected: LSN, got: LSN?)] = []
    /// Every conditional write's key, condition and outcome, by request id.
    var conditional: [RequestID: (key: String, condition: WriteCondition, outcome: RegisterOperation.Outcome)] = [:]
    /// Writes of unknown outcome a client settled as applied (at an LSN), and as not applied.
    var settledApplied: [(lsn: LSN, key: Key, request: RequestID)] = []
    var settledNotApplied: Set<RequestID> = []
    var history: [RegisterOperation] = []
    /// Every value a client tried to put, by key: what a read in mode any may return.
    var attemptedValues: [String: Set<[UInt8]>] = [:]
    var violations: [String] = []
    var trace = Deque<String>()
    var stats = SimulationStats()
    var nodeSettings = NodeStateMachine.Settings()
    /// An operator put an old master state in place (heartbeats may then be refused).
    var restoredOldState = false
    /// The newest master state the file held before an operator put an older one in place: what
    /// the operator puts back when healing.
    var latestGenuine: MasterState?

    enum Phase { case chaos, healing, final, done }

    public init(seed: UInt64, settings: SimulationSettings = SimulationSettings(), tracing: Bool = false) {
        self.seed = seed
        self.settings = settings
        self.tracing = tracing
        self.rng = SplitMix64(seed: seed &* 0x9E37_79B9_7F4A_7C15 &+ 0x632B_E59B_D9B4_E019)
        self.targetedRNG = SplitMix64(seed: seed &* 0xD1B5_4A32_D192_ED03 &+ 0x8CB9_2BA7_2F3D_8DD7)
        nodeSettings.maxUncommittedBytes = 64 << 10
        setUp()
    }

    // MARK: - Randomness and tracing

    func random(_ range: ClosedRange<UInt64>) -> UInt64 { UInt64.random(in: range, using: &rng) }
    func random(_ range: Range<Int>) -> Int { Int.random(in: range, using: &rng) }
    func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &rng) < p }

    func log(_ message: @autoclosure () -> String) {
        guard tracing else { return }
        trace.append("\(Self.time(now)) \(message())")
        if trace.count > settings.traceLimit { trace.removeFirst() }
    }

    static func time(_ t: UInt64) -> String {
        let ms = t / 1_000_000, us = (t / 1_000) % 1_000
        return "\(ms).\(us < 10 ? "00" : us < 100 ? "0" : "")\(us)ms"
    }

    func violation(_ message: String) {
        log("VIOLATION: \(message)")
        violations.append(message)
    }

    // MARK: - Set-up

    private func setUp() {
        let count = random(1..<6)
        var members: [ChainMember] = []
        for i in 0..<count {
            let n = SimNode(sim: self, index: i)
            nodes.append(n)
            members.append(n.member)
        }
        let state = MasterState(initial: try! ChainConfiguration(clusterID: "sim", chainID: 1, epoch: 1, members: members))
        master = SimMaster(sim: self, state: state)
        for n in nodes { n.start() }
        master.start()
        for c in 0..<settings.clients {
            let client = SimClient(sim: self, index: c)
            clients.append(client)
            schedule(.clientWake(c, gen: 0), after: random(0...50_000_000))
        }
        if settings.faults { schedule(.nemesis, after: random(100_000_000...600_000_000)) }
        schedule(.endChaos, after: settings.chaos)
        log("start: \(count) members, \(settings.clients) clients on \(settings.keys) keys")
    }

    // MARK: - Running

    /// Runs to the end and checks.
    public func run() -> SimulationResult {
        while violations.isEmpty, phase != .done, let (at, event) = queue.pop() {
            now = max(now, at)
            stats.events += 1
            dispatch(event)
            if stats.events > 3_000_000 {
                violation("the run did not end within 3,000,000 events")
            }
        }
        if violations.isEmpty { finalChecks() }
        stats.runs = 1
        return SimulationResult(seed: seed, violations: violations, trace: Array(trace), stats: stats)
    }

    func schedule(_ event: Event, after delay: UInt64) {
        queue.push(event, at: now &+ delay)
    }

    enum Event {
        case rpc(RPC)
        case repl(conn: Int, toPredecessor: Bool, ReplMessage)
        case replAccept(conn: Int)
        case nodeBeat(Int, inc: Int)
        case nodeBeatTimeout(Int, inc: Int, sentAt: UInt64)
        case nodeSync(Int, inc: Int)
        case nodeSlowDone(Int, inc: Int)
        case linkConnect(Int, inc: Int, gen: Int)
        case catchUpStep(Int, inc: Int, gen: Int)
        case catchUpTimeout(Int, inc: Int, request: Int)
        case readDone(Int, inc: Int, ReadJob)
        case masterTick(inc: Int)
        case masterPersisted(inc: Int)
        case clientWake(Int, gen: Int)
        case nemesis
        case endFault(Fault)
        case endChaos
        case settleCheck
    }

    /// The process an event runs in, if a paused process must not run it yet.
    private func target(of event: Event) -> Process? {
        switch event {
        case .rpc(let m): return m.to
        case .repl(let conn, let toPredecessor, _): return .node(toPredecessor ? conns[conn].pred : conns[conn].succ)
        case .replAccept(let conn): return .node(conns[conn].succ)
        case .nodeBeat(let i, _), .nodeBeatTimeout(let i, _, _), .nodeSync(let i, _), .nodeSlowDone(let i, _),
             .linkConnect(let i, _, _), .catchUpStep(let i, _, _), .catchUpTimeout(let i, _, _), .readDone(let i, _, _):
            return .node(i)
        case .masterTick, .masterPersisted: return .master
        case .clientWake, .nemesis, .endFault, .endChaos, .settleCheck: return nil
        }
    }

    private func dispatch(_ event: Event) {
        // A paused process runs nothing until it resumes: its events wait, in order.
        if let process = target(of: event), let until = pausedUntil(process), until > now {
            queue.push(event, at: until)
            return
        }
        switch event {
        case .rpc(let m): deliver(m)
        case .repl(let conn, let toPredecessor, let message): deliverRepl(conn, toPredecessor: toPredecessor, message)
        case .replAccept(let conn): accept(conn)
        case .nodeBeat(let i, let inc): if nodes[i].running(inc) { nodes[i].beat() }
        case .nodeBeatTimeout(let i, let inc, let sentAt): if nodes[i].running(inc) { nodes[i].beatTimedOut(sentAt: sentAt) }
        case .nodeSync(let i, let inc): if nodes[i].running(inc) { nodes[i].synced() }
        case .nodeSlowDone(let i, let inc): if nodes[i].running(inc) { nodes[i].slowDone() }
        case .linkConnect(let i, let inc, let gen): if nodes[i].running(inc) { nodes[i].connectLink(gen: gen) }
        case .catchUpStep(let i, let inc, let gen): if nodes[i].running(inc) { nodes[i].catchUpStep(gen: gen) }
        case .catchUpTimeout(let i, let inc, let request): if nodes[i].running(inc) { nodes[i].catchUpTimedOut(request: request) }
        case .readDone(let i, let inc, let job): if nodes[i].running(inc) { nodes[i].finishRead(job) }
        case .masterTick(let inc): if master.running(inc) { master.tick() }
        case .masterPersisted(let inc): if master.running(inc) { master.persisted() }
        case .clientWake(let c, let gen): clients[c].wake(gen: gen)
        case .nemesis: nemesis()
        case .endFault(let fault): end(fault)
        case .endChaos: heal()
        case .settleCheck: settleCheck()
        }
    }

    func pausedUntil(_ process: Process) -> UInt64? {
        switch process {
        case .node(let i): if case .paused(let until) = nodes[i].life { return until }
        case .master: if case .paused(let until) = master.life { return until }
        case .client: break
        }
        return nil
    }

    // MARK: - The network

    /// A process that sends and receives messages.
    enum Process: Hashable {
        case node(Int)
        case master
        case client(Int)
    }

    /// A request or reply between two processes (heartbeats, client requests, catch-up).
    struct RPC {
        var from: Process
        var to: Process
        /// The receiver's incarnation when sent: a restarted process never gets its
        /// predecessor's messages.
        var toIncarnation: Int
        var payload: Payload
    }

    enum Payload {
        case heartbeat(ChainManager.Beat, sentAt: UInt64)
        case heartbeatReply(ChainManager.Reply, sentAt: UInt64)
        case getConfiguration(attempt: Int)
        case configuration(ChainConfiguration, attempt: Int)
        case write(WriteRequest, attempt: Int)
        /// A read in a mode; in mode any with what the client's session has seen.
        case get(Key, ReadMode, session: LSN?, attempt: Int)
        case writeResult(Result<LSN, CatenaError>, attempt: Int)
        case readResult(Result<ReadValue, CatenaError>, attempt: Int)
        case catchUpRequest(after: LSN, request: Int)
        case catchUpReply(Result<[EncodedRecord], CatenaError>, request: Int)
        /// A member asks the tail which version of a key is committed (CRAQ's version query).
        case versionQuery(Key, query: Int)
        /// The tail's answer: the LSN of the key's newest version (nil: absent or deleted).
        case versionReply(Result<LSN?, CatenaError>, query: Int)
    }

    /// Whether messages from `a` to `b` are dropped now.
    func blocked(_ a: Process, _ b: Process) -> Bool {
        partitions.contains { $0.blocks(a, b) }
    }

    func incarnation(of p: Process) -> Int {
        switch p {
        case .node(let i): nodes[i].inc
        case .master: master.inc
        case .client: 0
        }
    }

    func isUp(_ p: Process) -> Bool {
        switch p {
        case .node(let i): nodes[i].life.isUp
        case .master: master.life.isUp
        case .client: true
        }
    }

    /// Sends a message; it arrives after a network delay unless a partition drops it (when sent
    /// or when it would arrive) or the receiver restarted meanwhile.
    func send(_ payload: Payload, from: Process, to: Process) {
        guard !blocked(from, to) else { return }
        let delay = chance(0.02) ? random(5_000_000...40_000_000) : random(50_000...600_000)
        schedule(.rpc(RPC(from: from, to: to, toIncarnation: incarnation(of: to), payload: payload)), after: delay)
    }

    private func deliver(_ m: RPC) {
        guard !blocked(m.from, m.to), isUp(m.to), incarnation(of: m.to) == m.toIncarnation else { return }
        switch m.to {
        case .master: master.receive(m.payload, from: m.from)
        case .node(let i): nodes[i].receive(m.payload, from: m.from)
        case .client(let c): clients[c].receive(m.payload)
        }
    }

    /// Opens a replication connection from `pred` to `succ`; the successor accepts it (or not)
    /// after a network delay.
    func openConnection(from pred: Int, to succ: Int) -> Int {
        let id = conns.count
        conns.append(ReplConn(id: id, pred: pred, predInc: nodes[pred].inc, succ: succ, succInc: nodes[succ].inc))
        if blocked(.node(pred), .node(succ)) || blocked(.node(succ), .node(pred)) || !nodes[succ].life.isUp {
            // Refused or unanswered: the link sees it break after a while.
            schedule(.repl(conn: id, toPredecessor: true, .closed), after: random(1_000_000...20_000_000))
            conns[id].open = false
            return id
        }
        schedule(.replAccept(conn: id), after: random(100_000...1_000_000))
        return id
    }

    private func accept(_ id: Int) {
        let c = conns[id]
        guard c.open, nodes[c.succ].running(c.succInc) else { return breakConnection(id) }
        nodes[c.succ].accept(connection: id, from: c.pred)
    }

    /// Sends `message` over the connection, in order with everything sent before on it.
    func sendRepl(_ id: Int, toPredecessor: Bool, _ message: ReplMessage) {
        guard conns[id].open else { return }
        let c = conns[id]
        let (from, to) = toPredecessor ? (c.succ, c.pred) : (c.pred, c.succ)
        if blocked(.node(from), .node(to)) { return breakConnection(id) }
        let earliest = now &+ (chance(0.02) ? random(2_000_000...20_000_000) : random(50_000...500_000))
        let at = max(earliest, toPredecessor ? c.lastToPredecessor : c.lastToSuccessor)
        if toPredecessor { conns[id].lastToPredecessor = at } else { conns[id].lastToSuccessor = at }
        queue.push(.repl(conn: id, toPredecessor: toPredecessor, message), at: at)
    }

    private func deliverRepl(_ id: Int, toPredecessor: Bool, _ message: ReplMessage) {
        let c = conns[id]
        if case .closed = message {
            if toPredecessor, nodes[c.pred].running(c.predInc) { nodes[c.pred].connectionClosed(id) }
            if !toPredecessor, nodes[c.succ].running(c.succInc) { nodes[c.succ].connectionClosed(id) }
            return
        }
        guard c.open else { return }
        let (from, to) = toPredecessor ? (c.succ, c.pred) : (c.pred, c.succ)
        guard !blocked(.node(from), .node(to)), nodes[c.pred].running(c.predInc), nodes[c.succ].running(c.succInc) else {
            return breakConnection(id)
        }
        nodes[to].receiveRepl(message, on: id, toPredecessor: toPredecessor)
    }

    /// Breaks a connection: each end notices after a moment.
    func breakConnection(_ id: Int) {
        guard conns[id].open else { return }
        conns[id].open = false
        let c = conns[id]
        if nodes[c.pred].running(c.predInc) {
            queue.push(.repl(conn: id, toPredecessor: true, .closed), at: max(now &+ random(100_000...5_000_000), c.lastToPredecessor))
        }
        if nodes[c.succ].running(c.succInc) {
            queue.push(.repl(conn: id, toPredecessor: false, .closed), at: max(now &+ random(100_000...5_000_000), c.lastToSuccessor))
        }
    }

    /// The index of the node at `member`'s address.
    func index(of member: ChainMember) -> Int? {
        nodes.firstIndex { $0.member == member }
    }

    // MARK: - Invariant bookkeeping

    /// Records that some node holds `records` in its log: no LSN may ever name two records.
    func register(_ records: [EncodedRecord], at node: Int) {
        for r in records {
            let sum = r.bytes.withUnsafeBytes { $0.le(r.bytes.count - 8, as: UInt64.self) }
            if let known = lsnRegistry[r.lsn] {
                if known != sum {
                    violation("LSN \(r.lsn) names two different records: \(nodes[node].id) now holds another one than was seen before")
                }
            } else {
                lsnRegistry[r.lsn] = sum
            }
        }
    }

    // MARK: - Faults

    enum Fault {
        case resumeNode(Int)
        case restartNode(Int)
        case resumeMaster
        case restartMaster
        case heal(Int)
        case diskOK(Int)
        /// The targeted crash of a new head (``newHeadOverAnUndurableLog(_:)``), if it still runs
        /// the same incarnation.
        case crashNewHead(Int, inc: Int)
    }

    /// A node became the head of an epoch whose first seq is not recorded yet, over a log whose
    /// last records are not yet durable (its own writes as the head of the epoch before, or its
    /// old predecessor's records). The random faults almost never hit the millisecond until its
    /// group commit, which is where one rule lives: a head reports where its epoch starts only
    /// over a durable log — one that reported first and then lost those records in a crash would
    /// stand below its own epoch's start (mutant 8). So the group commit is held back (a slow
    /// fsync, past a heartbeat or more), and mostly the node is killed within it (losing
    /// everything not durable) and restarted before the master would replace it.
    func newHeadOverAnUndurableLog(_ i: Int) {
        guard phase == .chaos, !(guarding && guarded.contains(i)) else { return }
        let hold = UInt64.random(in: 120_000_000...400_000_000, using: &targetedRNG)
        nodes[i].disk.syncHeldUntil = now + hold
        log("\(nodes[i].id): a new head's group commit is held back for \(hold / 1_000_000) ms")
        if Double.random(in: 0..<1, using: &targetedRNG) < 0.75 {
            schedule(.endFault(.crashNewHead(i, inc: nodes[i].inc)), after: UInt64.random(in: 100_000_000...(hold - 1_000_000), using: &targetedRNG))
        }
    }

    /// After the master restarts on an old state, the nodes that ran newer epochs must reach it
    /// within a failure timeout — the assumption under which it finds its state stale (see
    /// docs/ARCHITECTURE.md, the fault model): the nemesis leaves them and the master alone
    /// until then.
    var guarded: [Int] = []
    /// A node whose connection to the guarded ones must stay up too (a head restored from an
    /// old backup learns it lost records from its successor).
    var guardedPeer: Int?
    var guardUntil: UInt64 = 0
    var guarding: Bool { now < guardUntil }

    /// Whether the master may (re)start on its file now: the file is at least as new as every
    /// epoch a node has seen, or every node that saw a newer one can reach the master — then
    /// the nemesis leaves them and the master alone for three timeouts.
    func restartingOnAnOldStateIsSafe() -> Bool {
        let informed = nodes.indices.filter { !nodes[$0].removed && (nodes[$0].disk.seen?.configuration.epoch ?? 0) > master.file.epoch }
        guard !informed.isEmpty else { return true }
        guard !guarding, informed.allSatisfy({ nodes[$0].life == .alive && !blocked(.node($0), .master) && !blocked(.master, .node($0)) }) else {
            return false
        }
        guarded = informed
        guardedPeer = nil
        guardUntil = now + 3 * settings.failureTimeout
        return true
    }

    private func nemesis() {
        guard phase == .chaos else { return }
        if let h = guardedPeer, guarding, master.manager.state.configuration.members.contains(where: { $0.id == nodes[h].id }) {
            // The head restored from an old backup is still a member: its successor must stay
            // until the master has replaced it.
            guardUntil = max(guardUntil, now + settings.failureTimeout)
        }
        let live = nodes.indices.filter { nodes[$0].life.isUp && !nodes[$0].removed && !(guarding && guarded.contains($0)) }
        switch random(0..<22) {
        case 0, 1, 2:
            if let i = live.randomElement(using: &rng), live.count > 1 || chance(0.3) {
                stats.kills += 1
                nodes[i].kill()
                schedule(.endFault(.restartNode(i)), after: random(100_000_000...3_000_000_000))
            }
        case 3, 4, 5:
            if let i = live.randomElement(using: &rng) {
                stats.pauses += 1
                var d = chance(0.5) ? random(200_000_000...900_000_000) : random(1_100_000_000...3_000_000_000)
                // A pause while paused lasts until the later end (the events it holds wait for it).
                if case .paused(let until) = nodes[i].life { d = max(d, until - now) }
                nodes[i].life = .paused(until: now + d)
                log("\(nodes[i].id) paused for \(d / 1_000_000) ms")
                schedule(.endFault(.resumeNode(i)), after: d)
            }
        case 6:
            if master.life.isUp, !guarding {
                stats.masterKills += 1
                master.kill()
                schedule(.endFault(.restartMaster), after: random(50_000_000...2_000_000_000))
            }
        case 7:
            if master.life.isUp, !guarding {
                stats.masterPauses += 1
                var d = random(300_000_000...3_000_000_000)
                if case .paused(let until) = master.life { d = max(d, until - now) }
                master.life = .paused(until: now + d)
                log("master paused for \(d / 1_000_000) ms")
                schedule(.endFault(.resumeMaster), after: d)
            }
        case 8, 9, 10, 11:
            let p = Partition.random(id: stats.partitions + 1, nodes: nodes.indices.filter { !nodes[$0].removed }, clients: clients.count, using: &rng)
            if guarding, guarded.contains(where: { g in
                p.blocks(.node(g), .master) || p.blocks(.master, .node(g))
                    || guardedPeer.map { p.blocks(.node(g), .node($0)) || p.blocks(.node($0), .node(g)) } ?? false
            }) { break }
            partitions.append(p)
            stats.partitions += 1
            log("partition \(p)")
            for c in conns.indices where conns[c].open && (p.blocks(.node(conns[c].pred), .node(conns[c].succ)) || p.blocks(.node(conns[c].succ), .node(conns[c].pred))) {
                breakConnection(c)
            }
            schedule(.endFault(.heal(p.id)), after: random(200_000_000...3_000_000_000))
        case 12:
            if let i = live.randomElement(using: &rng) {
                stats.syncFailures += 1
                nodes[i].failNextSync = true
                log("\(nodes[i].id): the next fsync fails")
            }
        case 13:
            if let i = live.randomElement(using: &rng) {
                stats.diskFulls += 1
                nodes[i].diskFull = true
                log("\(nodes[i].id): disk full")
                schedule(.endFault(.diskOK(i)), after: random(100_000_000...2_000_000_000))
            }
        case 14:
            // An operator adds a node.
            if nodes.filter({ !$0.removed }).count < 6, master.life == .alive, !guarding {
                let n = SimNode(sim: self, index: nodes.count)
                nodes.append(n)
                n.start()
                do {
                    try master.manager.addNode(n.id, address: n.member.address)
                    stats.added += 1
                    log("operator adds \(n.id)")
                    master.propose()
                } catch {
                    log("operator could not add \(n.id): \(error)")
                }
            }
        case 15:
            // An operator removes (drains) a node.
            let candidates = nodes.indices.filter { !nodes[$0].removed && !nodes[$0].removing }
            if candidates.count > 2, master.life == .alive, !guarding, let i = candidates.randomElement(using: &rng) {
                do {
                    try master.manager.removeNode(nodes[i].id, now: master.clock)
                    nodes[i].removing = true
                    stats.removed += 1
                    log("operator removes \(nodes[i].id)")
                    master.propose()
                    // Half the time the master's replies to it are lost from then on, for a while:
                    // it keeps the lease it holds (no reply takes it away), and the master must not
                    // take its word that it holds none before it does.
                    if Bool.random(using: &rng) {
                        let p = Partition(id: stats.partitions + 1, kind: "the master's replies to \(nodes[i].id) are lost", cut: [(.master, .node(i))])
                        partitions.append(p)
                        stats.partitions += 1
                        log("partition \(p)")
                        schedule(.endFault(.heal(p.id)), after: random(200_000_000...3_000_000_000))
                    }
                } catch {
                    log("operator could not remove \(nodes[i].id): \(error)")
                }
            }
        case 18:
            // An operator restores the head's data directory from an old backup (or its disk
            // lost writes it had acknowledged as durable): it restarts with a log that lacks the
            // last records it had forwarded. Survivable only while its successor holds them, so
            // that successor and the master are left alone for three timeouts — and only while
            // the master hears the successor and knows it holds every committed write: a successor still
            // catching up may lack records the head committed as the tail, and nothing tells the
            // master whether those the head lost were among them (the chain stays unavailable;
            // docs/ARCHITECTURE.md, the fault model).
            let config = master.manager.state.configuration
            // The configuration must be the chain's latest: under a master state restored from an
            // old backup, "its successor" may be no replica of the chain the nodes really run.
            let latest = nodes.allSatisfy { ($0.disk.seen?.configuration.epoch ?? 0) <= config.epoch }
                && latestGenuine.map { config.epoch >= $0.epoch } ?? true
            guard !guarding, master.life == .alive, master.manager.staleness == nil, latest, config.members.count >= 2,
                  let h = index(of: config.members[0]), let s = index(of: config.members[1]),
                  nodes[h].life == .alive, nodes[s].life == .alive, !nodes[h].removed, !nodes[s].removed, !nodes[s].removing,
                  nodes[s].machine.failure == nil, nodes[s].machine.state == .member, !nodes[s].diskFull, !nodes[s].failNextSync,
                  !master.manager.isCatchingUp(nodes[s].id),
                  // ... and one the master hears from now (not a member about to be removed as
                  // failed, which would leave the restored head alone with its loss).
                  master.manager.status(now: master.clock).first(where: { $0.id == nodes[s].id })?.health == .healthy,
                  // ... and whom no proposal in flight removes: one made while it was silent
                  // (before it restarted) still persists after it is heard again, and left the
                  // restored head alone (seeds 1378997, 1408582, 1423610, 1498601).
                  master.manager.proposal.map({ $0.configuration.members.contains { $0.id == nodes[s].id } }) ?? true,
                  !blocked(.node(h), .node(s)), !blocked(.node(s), .node(h)),
                  !blocked(.node(s), .master), !blocked(.master, .node(s)),
                  nodes[s].disk.durable > 0, nodes[h].disk.durable >= nodes[s].disk.durable,
                  nodes[h].disk.records.prefix(nodes[s].disk.durable) == nodes[s].disk.records.prefix(nodes[s].disk.durable),
                  // Every acknowledged write is on the successor too (a head that ran alone
                  // may hold some that nowhere else does: losing those is losing every copy).
                  nodes[h].machine.configuration?.successor(of: nodes[h].id)?.id == nodes[s].id,
                  acknowledged.allSatisfy({ Int($0.lsn.seq) <= nodes[s].disk.durable })
            else { break }
            let keep = random(0..<nodes[s].disk.durable)
            stats.nodeRestores += 1
            log("operator restores \(nodes[h].id)'s data from an old backup: \(keep) of \(nodes[h].disk.records.count) records")
            nodes[h].kill()
            nodes[h].disk.records.removeLast(nodes[h].disk.records.count - keep)
            nodes[h].disk.durable = keep
            nodes[h].disk.lostDurable = true
            nodes[h].disk.ghostFrom = nil
            nodes[h].disk.syncFailedAt = nil
            guarded = [s]
            guardedPeer = h
            guardUntil = now + 3 * settings.failureTimeout
            nodes[h].restart()
        case 17:
            // An operator restores the master's state from an old backup: under the running
            // master, or restarting it on that file.
            if master.life == .alive, master.snapshots.count > 1, chance(0.5) {
                let old = master.snapshots[random(0..<(master.snapshots.count - 1))]
                guard old.epoch < master.file.epoch else { break }
                // Restarting the master on it needs a node that ran a newer epoch to reach the
                // master within a timeout; otherwise the file is swapped under the running master.
                restoredOldState = true
                stats.staleRestores += 1
                log("operator restores the master state of epoch \(old.epoch) (the file had \(master.file.epoch))")
                if latestGenuine.map({ master.file.epoch >= $0.epoch }) ?? true { latestGenuine = master.file }
                master.file = old
                if chance(0.5), restartingOnAnOldStateIsSafe() {
                    master.kill()
                    master.file = old
                    master.restart()
                }
            }
        case 16:
            if let c = conns.indices.filter({ conns[$0].open }).randomElement(using: &rng) {
                log("connection \(c) breaks")
                breakConnection(c)
            }
        default:
            break
        }
        schedule(.nemesis, after: random(50_000_000...500_000_000))
    }

    private func end(_ fault: Fault) {
        switch fault {
        case .resumeNode(let i):
            if case .paused(let until) = nodes[i].life, until <= now {
                nodes[i].life = .alive
                log("\(nodes[i].id) resumes")
            }
        case .restartNode(let i):
            if nodes[i].life == .dead, !nodes[i].removed { nodes[i].restart() }
        case .resumeMaster:
            if case .paused(let until) = master.life, until <= now {
                master.life = .alive
                log("master resumes")
            }
        case .restartMaster:
            guard master.life == .dead else { break }
            if restartingOnAnOldStateIsSafe() {
                master.restart()
            } else {
                schedule(.endFault(.restartMaster), after: 100_000_000)
            }
        case .heal(let id):
            partitions.removeAll { $0.id == id }
            log("partition \(id) healed")
        case .diskOK(let i):
            nodes[i].diskFull = false
        case .crashNewHead(let i, let inc):
            guard nodes[i].inc == inc, nodes[i].life == .alive, !nodes[i].removed else { break }
            stats.kills += 1
            stats.newHeadKills += 1
            nodes[i].kill(losingAllUnsynced: true)
            schedule(.endFault(.restartNode(i)), after: UInt64.random(in: 20_000_000...300_000_000, using: &targetedRNG))
        }
    }

    /// Ends the faults: every partition heals, paused processes resume, dead and failed ones
    /// restart; then waits for one settled chain.
    private func heal() {
        phase = .healing
        log("healing")
        partitions = []
        if restoredOldState, let newest = stateToPutBack(), newest != master.file {
            // The operator notices (the nodes log that they refuse the master's configuration or
            // history) and puts the latest state back, restarting the master on it: a master
            // that finds its state stale reloads it by itself, but one whose state has the
            // chain's epoch and an older history cannot tell.
            log("operator puts the master state of epoch \(newest.epoch) back and restarts the master")
            if master.life.isUp { master.kill() }
            master.file = newest
        }
        if master.life == .dead { master.restart() }
        if case .paused = master.life { master.life = .alive }
        for n in nodes where !n.removed {
            n.diskFull = false
            n.failNextSync = false
            if case .paused = n.life { n.life = .alive }
            if n.life == .dead || n.machine.failure != nil {
                if n.life != .dead { n.kill() }
                n.restart()
            }
        }
        settleDeadline = now + settings.settleLimit
        schedule(.settleCheck, after: 100_000_000)
    }

    var settleDeadline: UInt64 = 0

    /// What an operator puts back after restoring an old master state: of the state from
    /// before the restore and the newest the master wrote since, the one the chain runs — that
    /// descends from the newest configuration a node adopted — and of two such the newer (or the
    /// one that knows more epoch starts). A state the chain does not run is worth nothing, and
    /// putting it back would fork the chain (seed 347513: the master, cut off from every node,
    /// moved on to epoch 5, which no node ever heard of; restarted on the state of epoch 1, it
    /// made its own epoch 2, in which a node acknowledged writes; epoch 5 put back dropped them —
    /// the fault model's "a state the chain does not run").
    func stateToPutBack() -> MasterState? {
        let candidates = [latestGenuine, master.snapshots.last].compactMap { $0 }
        let adopted = nodes.compactMap { $0.disk.seen?.configuration }.max { $0.epoch < $1.epoch }
        func runs(_ c: MasterState) -> Bool {
            guard let adopted else { return false }
            var state: MasterState? = c
            while let s = state, s.epoch >= adopted.epoch {
                if s.configuration == adopted { return true }
                state = master.parents[s]
            }
            return false
        }
        func rank(_ c: MasterState) -> (Int, UInt64, Int) {
            (runs(c) ? 1 : 0, c.epoch, c.epochHistory.count { $0.firstSeq != nil })
        }
        // Ties go to the later one (the newest the master wrote).
        return candidates.reduce(nil) { best, c in best.map { rank($0) > rank(c) ? $0 : c } ?? c }
    }
    /// The run ended without settling (allowed only after an old master state was restored).
    var unsettled = false

    /// Whether the cluster has settled: every node not removed is a member of the master's
    /// configuration, every member runs it and holds the same log, durably, and no client is in
    /// the middle of an operation.
    private func settled() -> Bool {
        guard master.life == .alive, master.inFlight == nil else { return false }
        let config = master.manager.state.configuration
        // Nodes an operator removed are not expected back (one that was down when the master
        // forgot it cannot tell it was removed, and waits to be added); one whose removal a
        // master restart lost may stay.
        let expected = nodes.filter { !$0.removed && !$0.removing && $0.life == .alive }
        guard !expected.isEmpty, expected.allSatisfy({ n in config.members.contains { $0.id == n.id } }) else { return false }
        let members = config.members.compactMap { m in nodes.first { $0.id == m.id } }
        guard members.count == config.members.count, members.allSatisfy({ !$0.removed && $0.life == .alive }) else { return false }
        guard members.allSatisfy({ $0.machine.state == .member && $0.machine.epoch == config.epoch && $0.disk.durable == $0.disk.records.count }) else {
            return false
        }
        let first = members[0].disk.records
        guard members.allSatisfy({ $0.disk.records.count == first.count && $0.disk.records.last?.lsn == first.last?.lsn }) else { return false }
        return clients.allSatisfy { $0.op == nil }
    }

    private func settleCheck() {
        switch phase {
        case .healing:
            reAdd()
            restartFailed()
            if settled() {
                phase = .final
                log("settled at epoch \(master.manager.state.epoch); final round")
                for c in clients { c.startFinalRound() }
            } else if now > settleDeadline {
                if restoredOldState {
                    // An old master state put in place while every node that ran the newer epochs
                    // was silent can fork the epochs: nodes then refuse the master's configurations
                    // (safe, but stuck until an operator steps in). Safety is still checked.
                    log("not settled after an old master state was restored: \(describe())")
                    unsettled = true
                } else {
                    violation("the cluster did not settle within \(settings.settleLimit / 1_000_000_000) s of healing: \(describe())")
                }
                phase = .done
                return
            }
            schedule(.settleCheck, after: 100_000_000)
        case .final:
            if clients.allSatisfy({ $0.finalDone }) && settled() {
                phase = .done
            } else if now > settleDeadline + 30_000_000_000 {
                violation("the final round did not finish: \(describe())")
                phase = .done
            } else {
                schedule(.settleCheck, after: 100_000_000)
            }
        default:
            break
        }
    }

    /// The operator restarts nodes that stopped on a failed log (at most once a second each): a
    /// restart re-reads the log, and the node rejoins once the master has replaced it.
    private func restartFailed() {
        for n in nodes where !n.removed && n.life == .alive && n.machine.failure != nil && now >= n.restartableAt {
            log("operator restarts \(n.id), stopped on its failed log")
            n.kill()
            n.restart()
            n.restartableAt = now + 1_000_000_000
        }
    }

    /// The operator asks again for nodes whose addition a master restart (or an old state put
    /// in place) lost: they wait, unknown to the master.
    private func reAdd() {
        guard master.life == .alive, master.manager.staleness == nil else { return }
        let state = master.manager.state
        for n in nodes where !n.removed && !n.removing && n.life == .alive {
            let known = state.configuration.members.contains { $0.id == n.id } || state.standbys.contains { $0.id == n.id }
            guard !known, (try? master.manager.addNode(n.id, address: n.member.address)) != nil else { continue }
            log("operator adds \(n.id) again")
            master.propose()
        }
    }

    func describe() -> String {
        let c = master.manager.state
        let ns = nodes.map { n in
            "\(n.id)[\(n.life)\(n.removed ? " removed" : "") \(n.machine.state) e\(n.machine.epoch) log \(n.disk.records.last?.lsn ?? .zero) durable \(n.disk.durable)]"
        }
        // What the master makes of each node: why a standby is not appended, a member not leased.
        let seen = master.manager.status(now: now).map { r in
            "\(r.id): \(r.health) reported \(r.highestLSN.map { "\($0)" } ?? "nothing")\(r.failure.map { " failure \($0.code)" } ?? "")\(master.manager.isCatchingUp(r.id) ? " catching up" : "")"
        }
        return "master epoch \(c.epoch) members \(c.configuration.members.map(\.id.rawValue)) standbys \(c.standbys.map(\.id.rawValue)) \(master.life); \(ns.joined(separator: " ")); master sees \(seen.joined(separator: ", "))"
    }

    // MARK: - Final checks

    private func finalChecks() {
        stats.reconfigurations = Int(master.manager.state.epoch) - 1
        switch LinearizabilityChecker.check(history) {
        case .linearizable: break
        case .notLinearizable(let key, let explanation): violation("key \(key) is not linearizable: \(explanation)")
        case .gaveUp(let key): log("the checker gave up on key \(key) (too many states)")
        }
        guard !unsettled else { return }
        let members = nodes.filter { n in master.manager.state.configuration.members.contains { $0.id == n.id } }
        var lost: [String] = []
        for (lsn, key, request) in acknowledged {
            for n in members {
                guard lsn.seq >= 1, Int(lsn.seq) <= n.disk.records.count else {
                    lost.append("acknowledged write \(lsn) (\(key)) is missing from \(n.id), whose log ends at \(n.disk.records.last?.lsn ?? .zero)")
                    continue
                }
                let r = n.disk.records[Int(lsn.seq) - 1]
                if r.lsn != lsn || r.key != key || r.header.requestID != request {
                    lost.append("acknowledged write \(lsn) (\(key)) is not in \(n.id)'s log, which has \(r.lsn) (\(r.key)) there")
                }
            }
        }
        if !lost.isEmpty {
            violation(lost.prefix(3).joined(separator: "; ") + (lost.count > 3 ? "; and \(lost.count - 3) more" : ""))
        }
        if let first = members.first {
            for n in members.dropFirst() where n.disk.records != first.disk.records {
                violation("\(n.id)'s log differs from \(first.id)'s once settled")
            }
            checkConditions(in: first.disk.records)
            checkSettlements(in: first.disk.records)
            let settled = first.disk.records
            for read in sessionReads where (read.got?.seq ?? 0) < read.expected.seq {
                let e = read.expected
                let r = e.seq >= 1 && Int(e.seq) <= settled.count ? settled[Int(e.seq) - 1] : nil
                if r?.lsn == e && r?.key == read.key {
                    violation("client \(read.client) read \(read.key) in mode any and got \(read.got.map { "version \($0)" } ?? "no version"), older than \(e), which its session had seen and the chain kept")
                }
            }
            for (lsn, key, request, ack) in weakAcknowledged {
                let r = lsn.seq >= 1 && Int(lsn.seq) <= settled.count ? settled[Int(lsn.seq) - 1] : nil
                if r?.lsn != lsn || r?.key != key || r?.header.requestID != request {
                    stats.weakLost += 1
                    log("a write acknowledged in mode \(ack) was lost: \(lsn) (\(key))")
                }
            }
        }
    }

    /// A write settled as applied is in the settled log at the LSN the answer named; one settled
    /// as not applied is not in it (only its fence is).
    private func checkSettlements(in log: [EncodedRecord]) {
        for (lsn, key, request) in settledApplied {
            let r = lsn.seq >= 1 && Int(lsn.seq) <= log.count ? log[Int(lsn.seq) - 1] : nil
            if r?.lsn != lsn || r?.header.requestID != request || r?.type.isVersion != true {
                violation("the write \(request) of \(key) was settled as applied at \(lsn), which the log does not hold")
            }
        }
        guard !settledNotApplied.isEmpty else { return }
        var fenced: Set<RequestID> = []
        for r in log where settledNotApplied.contains(r.header.requestID) {
            if r.type == .fence {
                fenced.insert(r.header.requestID)
            } else {
                violation("the write \(r.header.requestID) of \(r.key) was settled as not applied, yet the log holds it at \(r.lsn)")
            }
        }
        for id in settledNotApplied.subtracting(fenced).sorted(by: { "\($0)" < "\($1)" }) {
            violation("the write \(id) was settled as not applied, but its fence is not in the log")
        }
    }

    /// Every conditional write in the settled log met its condition against its key's version
    /// just before it in the log (the order every replica applies), and none that was refused
    /// (or failed for sure otherwise) is in it.
    private func checkConditions(in log: [EncodedRecord]) {
        var versions: [Key: KeyVersion] = [:]
        var applied: Set<RequestID> = []
        for r in log {
            if let c = conditional[r.header.requestID], r.type.isVersion {
                applied.insert(r.header.requestID)
                if !c.condition.holds(for: versions[r.key]) {
                    violation("the write \(r.lsn) of \(r.key) required \(c.condition), but the key was \(versions[r.key].map { "at \($0)" } ?? "absent") just before it in the log")
                }
            }
            switch r.type {
            case .delete: versions[r.key] = nil
            case .put, .manifest: versions[r.key] = KeyVersion(lsn: r.lsn, contentChecksum: r.header.contentChecksum)
            default: break
            }
        }
        for (id, c) in conditional where c.outcome == .failed && applied.contains(id) {
            violation("the conditional write \(id) of \(c.key) (\(c.condition)) was refused, yet it is in the log")
        }
    }
}

/// Where a process is.
enum Life: Equatable, CustomStringConvertible {
    case alive
    case paused(until: UInt64)
    case dead

    var isUp: Bool {
        if case .dead = self { return false }
        return true
    }

    var description: String {
        switch self {
        case .alive: "alive"
        case .paused: "paused"
        case .dead: "dead"
        }
    }
}

/// A replication connection from a predecessor to its successor.
struct ReplConn {
    var id: Int
    var pred: Int
    var predInc: Int
    var succ: Int
    var succInc: Int
    var open = true
    var lastToSuccessor: UInt64 = 0
    var lastToPredecessor: UInt64 = 0
}

/// What travels on a replication connection.
enum ReplMessage {
    case position(LSN, epoch: UInt64)
    case acknowledge(LSN, held: [LSN], epoch: UInt64)
    case replicate([EncodedRecord], epoch: UInt64)
    case readTarget(LSN)
    case closed
}

/// A read at the tail between its two lease checks.
/// What a read returns: the version's value (nil: absent or deleted) and LSN (nil: none known,
/// e.g. a key the tail says is absent).
struct ReadValue {
    var value: [UInt8]?
    var lsn: LSN?
}

struct ReadJob {
    /// Who waits for the answer: a client's read, or a member's version query at the tail.
    enum Reply {
        case client(Int, attempt: Int, ReadValue)
        case versionQuery(node: Int, query: Int, version: LSN?)
    }
    var reply: Reply
}

/// A set of directed links the network drops.
struct Partition: CustomStringConvertible {
    let id: Int
    let kind: String
    /// Directed pairs (from, to) that are cut.
    let cut: [(ClusterSimulation.Process, ClusterSimulation.Process)]

    func blocks(_ a: ClusterSimulation.Process, _ b: ClusterSimulation.Process) -> Bool {
        cut.contains { $0.0 == a && $0.1 == b }
    }

    var description: String { "\(id) \(kind)" }

    static func random(id: Int, nodes: [Int], clients: Int, using rng: inout SplitMix64) -> Partition {
        typealias P = ClusterSimulation.Process
        let everyone: [P] = nodes.map { .node($0) } + [.master] + (0..<clients).map { .client($0) }
        var cut: [(P, P)] = []
        var kind = ""
        let x = nodes.randomElement(using: &rng) ?? 0
        switch Int.random(in: 0..<6, using: &rng) {
        case 0:
            kind = "n\(x + 1) isolated"
            for p in everyone where p != .node(x) { cut += [(.node(x), p), (p, .node(x))] }
        case 1 where nodes.count > 1:
            let y = nodes.filter { $0 != x }.randomElement(using: &rng)!
            kind = "n\(x + 1) -/-> n\(y + 1) (one way)"
            cut = [(.node(x), .node(y))]
        case 2 where nodes.count > 1:
            kind = "n\(x + 1) reaches the master but not its peers"
            for y in nodes where y != x { cut += [(.node(x), .node(y)), (.node(y), .node(x))] }
        case 3:
            kind = "n\(x + 1) cannot reach the master (one way)"
            cut = [(.node(x), .master)]
        case 4:
            kind = "the master is cut off from the nodes"
            for y in nodes { cut += [(.node(y), .master), (.master, .node(y))] }
        default:
            kind = "clients cannot reach n\(x + 1)"
            for c in 0..<clients { cut += [(.client(c), .node(x)), (.node(x), .client(c))] }
        }
        return Partition(id: id, kind: kind, cut: cut)
    }
}
