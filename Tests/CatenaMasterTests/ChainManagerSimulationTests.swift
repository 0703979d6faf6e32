import CatenaCluster
import CatenaCore
import CatenaMaster
import Foundation
import Testing

/// Seeded simulations of a chain under a ``ChainManager``: a fake clock, 1–5 members and 0–2
/// standbys whose heartbeats are jittered and delayed, who are killed, paused, resumed and
/// restarted (keeping their log, sometimes at a new address), whose log sometimes fails while
/// they keep heartbeating (reporting the failure until restarted), whose LSNs grow at the head and
/// flow down the chain (committed once the tail has them); a tail paused just as a standby close
/// behind it could join, and the head killed soon after; an operator adding and removing nodes; a state file whose
/// compare-and-swap takes a random time and sometimes fails; a master that sometimes restarts
/// (its in-flight proposal persisted or not) and sometimes pauses — briefly, or for up to three
/// timeouts, after which the heartbeats queued meanwhile are delivered before or after its first
/// tick. After every step the rules the manager promises are checked; a violation stops the
/// schedule and is reported with its seed and trace.
/// `CATENA_SIM_SEED=n` replays one seed.
@Suite("Chain manager simulation")
struct ChainManagerSimulationTests {
    static let seeds: UInt64 = 3000
    static let steps = 200
    static let shards = 4

    @Test(arguments: 0..<shards)
    func seededSchedulesKeepTheRules(shard: Int) {
        var seeds = Array(stride(from: UInt64(shard), to: Self.seeds, by: Self.shards))
        if let only = ProcessInfo.processInfo.environment["CATENA_SIM_SEED"].flatMap(UInt64.init) {
            seeds = only % UInt64(Self.shards) == UInt64(shard) ? [only] : []
        }
        var totals = Simulation.Counters()
        for seed in seeds {
            let sim = Simulation(seed: seed, tracing: false)
            sim.run(steps: Self.steps)
            totals.add(sim.counters)
            if !sim.violations.isEmpty {
                // Deterministic: run it again, tracing this time.
                let traced = Simulation(seed: seed, tracing: true)
                traced.run(steps: Self.steps)
                Issue.record("""
                    seed \(seed) (replay: CATENA_SIM_SEED=\(seed)): \(sim.violations.joined(separator: "\n"))
                    --- trace (last 200 events) ---
                    \(traced.trace.suffix(200).joined(separator: "\n"))
                    """)
                return
            }
        }
        guard seeds.count > 100 else { return }
        // The schedules exercise what they claim to: every kind of reconfiguration happens.
        #expect(totals.failureRemovals > 1000, "\(totals)")
        #expect(totals.drainRemovals > 250, "\(totals)")
        #expect(totals.joins > 1000, "\(totals)")
        #expect(totals.keptLastMember > 30, "\(totals)")
        #expect(totals.firstSeqsRecorded > 2000, "\(totals)")
        #expect(totals.addressChanges > 100, "\(totals)")
        #expect(totals.failedPersists > 500, "\(totals)")
        #expect(totals.masterRestarts > 80, "\(totals)")
        #expect(totals.refusedRemovals > 80, "\(totals)")
        #expect(totals.masterPauses > 300, "\(totals)")
        #expect(totals.reportedFailureRemovals > 300, "\(totals)")
        #expect(totals.pausedTailsWithDeadHeads > 300, "\(totals)")
    }
}

/// One schedule. A class, not a struct: a debug build copies a struct's every field whenever a
/// mutating method calls a non-mutating one, which made the simulation ten times slower.
private final class Simulation {
    struct Counters: CustomStringConvertible {
        var failureRemovals = 0, drainRemovals = 0, joins = 0, keptLastMember = 0, firstSeqsRecorded = 0
        var addressChanges = 0, failedPersists = 0, masterRestarts = 0, refusedRemovals = 0, masterPauses = 0
        var reportedFailureRemovals = 0, pausedTailsWithDeadHeads = 0

        mutating func add(_ o: Counters) {
            failureRemovals += o.failureRemovals
            drainRemovals += o.drainRemovals
            joins += o.joins
            keptLastMember += o.keptLastMember
            firstSeqsRecorded += o.firstSeqsRecorded
            addressChanges += o.addressChanges
            failedPersists += o.failedPersists
            masterRestarts += o.masterRestarts
            refusedRemovals += o.refusedRemovals
            masterPauses += o.masterPauses
            reportedFailureRemovals += o.reportedFailureRemovals
            pausedTailsWithDeadHeads += o.pausedTailsWithDeadHeads
        }

        var description: String {
            "failure removals \(failureRemovals), drain removals \(drainRemovals), joins \(joins), kept last member \(keptLastMember), first seqs \(firstSeqsRecorded), address changes \(addressChanges), failed persists \(failedPersists), master restarts \(masterRestarts), refused removals \(refusedRemovals), master pauses \(masterPauses), removals of members reporting a failure \(reportedFailureRemovals), paused tails with dead heads \(pausedTailsWithDeadHeads)"
        }
    }

    enum Life: Equatable {
        case alive
        case paused(until: UInt64)
        case dead
        /// Told ``ChainManager/Standing/unknown``: stopped until an operator adds it again.
        case stopped
    }

    /// A storage node: its log's end, its heartbeats, what its last reply made it believe — and
    /// what the simulation knows about it from the master's side. (A class for the same reason
    /// as the simulation: a debug build copies a whole struct to read one field of an element.)
    final class Node {
        let id: NodeID
        var port: Int
        var life: Life
        var lsn: LSN
        let flaky: Bool
        var nextBeat: UInt64 = 0
        var lastDelivery: UInt64 = 0
        var configuration: ChainConfiguration?
        var history: [EpochStart] = []
        var standing: ChainManager.Standing?
        /// From its configuration and history: it heads its epoch, and may write (its first seq
        /// is recorded) or must report where it starts.
        var writes = false
        var startReport: EpochStart?
        /// When its lease runs out, counted the node's way: send time + lease.
        var leaseExpiry: UInt64 = 0
        /// When it last sent a heartbeat (nil: not since it last died), and since when it has
        /// sent them no further apart than ``Simulation/steadyGap``.
        var lastSent: UInt64?
        var steadySince: UInt64 = 0
        /// Its log failed: it takes no records, and reports the failure in its heartbeats until
        /// it restarts.
        var failure: CatenaError?
        /// Since when the heartbeats the current master got from it report a failure.
        var failureSeen: UInt64?

        /// When the current master last received its heartbeat, and what that reported.
        var heard: UInt64?
        var reported: LSN?
        /// What the state file makes it.
        var inFile: ChainManager.Standing = .unknown
        /// The operator removed it (a member: drained; a standby: forgotten), the file still knows it.
        var drained = false
        /// The operator added it, the file does not know it yet.
        var adding = false

        var address: String { "127.0.0.1:\(port)" }

        init(id: NodeID, port: Int, life: Life, lsn: LSN, flaky: Bool) {
            self.id = id
            self.port = port
            self.life = life
            self.lsn = lsn
            self.flaky = flaky
        }
    }

    struct Message {
        var at: UInt64
        var sentAt: UInt64
        var node: Int
        var beat: ChainManager.Beat
    }

    struct InFlight {
        var state: MasterState
        var madeAt: UInt64
        var completesAt: UInt64
        var succeeds: Bool
    }


    let seed: UInt64
    let tracing: Bool
    var rng: SplitMix64
    let timeout: UInt64 = 1_000_000_000
    let interval: UInt64 = 100_000_000
    let quantum: UInt64 = 50_000_000
    /// The largest gap between two heartbeats of a live node (a flaky one's; plus at most a
    /// quarter interval of delivery jitter, and a master pause below the threshold of at most
    /// 0.12 timeouts, it stays below the timeout).
    var steadyGap: UInt64 { timeout * 8 / 10 }
    let lease: UInt64
    let lag: UInt64
    let settings: ChainManager.Settings
    let maxPersistDelay: UInt64
    /// No failed persists and no master restarts: the removal deadline is checked.
    let clean: Bool
    let persistFailure: Double

    var now: UInt64 = 0
    var manager: ChainManager
    var managerStart: UInt64 = 0
    /// What the state file holds: the active state.
    var file: MasterState
    /// The file's members, as indices into ``nodes``, in chain order.
    var chain: [Int] = []
    var inFlight: InFlight?
    var nextTick: UInt64
    var nodes: [Node] = []
    var messages: [Message] = []
    /// The master handles nothing (heartbeats, ticks, persist results) before this: it is paused.
    var masterPausedUntil: UInt64 = 0
    /// When the master last resumed from a pause longer than the threshold.
    var masterResumed: UInt64 = 0
    /// After the current pause, the first tick comes before the queued heartbeats.
    var tickFirst = false
    /// The highest seq the tail of the chain has ever held: committed, and acknowledged to clients.
    var committed: UInt64 = 0
    /// A node to kill, and when.
    var scheduledKill: (at: UInt64, node: Int)?
    /// The last step at which a member was catching up (the master keeps a failed member while
    /// the others may lack committed writes).
    var catchingUpUntil: UInt64 = 0

    var counters = Counters()
    /// The events, when tracing; the broken rules.
    var trace: [String] = []
    var violations: [String] = []

    init(seed: UInt64, tracing: Bool) {
        self.seed = seed
        self.tracing = tracing
        var rng = SplitMix64(seed: seed &* 0x9E37_79B9_7F4A_7C15 &+ 1)
        let memberCount = Int.random(in: 1...5, using: &rng)
        let standbyCount = Int.random(in: 0...2, using: &rng)
        lease = UInt64.random(in: timeout / 2...timeout, using: &rng)
        lag = UInt64.random(in: 8...256, using: &rng)
        maxPersistDelay = UInt64.random(in: interval / 10...3 * interval, using: &rng)
        clean = seed % 3 == 0
        persistFailure = clean ? 0 : 0.15
        settings = ChainManager.Settings(failureTimeout: .nanoseconds(timeout), lease: .nanoseconds(lease), catchUpLagRecords: lag)
        var members: [ChainMember] = []
        var standbys: [ChainMember] = []
        var nodes: [Node] = []
        for i in 0..<(memberCount + standbyCount) {
            let isMember = i < memberCount
            let seq: UInt64 = isMember ? 1000 - UInt64(i) * UInt64.random(in: 0...3, using: &rng) : UInt64.random(in: 0...1000, using: &rng)
            let n = Node(id: try! NodeID("n\(i + 1)"), port: 7001 + i, life: .alive, lsn: LSN(epoch: 1, seq: seq),
                         flaky: Double.random(in: 0..<1, using: &rng) < 0.2)
            n.nextBeat = UInt64.random(in: 0...interval, using: &rng)
            n.standing = isMember ? .member : .joining
            nodes.append(n)
            if isMember {
                members.append(ChainMember(id: n.id, address: n.address))
            } else {
                standbys.append(ChainMember(id: n.id, address: n.address))
            }
        }
        let file = MasterState(
            configuration: try! ChainConfiguration(clusterID: "sim", chainID: 1, epoch: 1, members: members),
            epochHistory: [EpochStart(epoch: 1)], standbys: standbys)
        for i in nodes.indices {
            nodes[i].configuration = file.configuration
            nodes[i].history = file.epochHistory
        }
        self.file = file
        self.nodes = nodes
        manager = ChainManager(state: file, settings: settings, now: 0)
        nextTick = interval
        self.rng = rng
        indexFile()
        for n in nodes { believe(n) }
        log("start: members \(members.map(\.id.rawValue)), standbys \(standbys.map(\.id.rawValue)), lease \(lease / 1_000_000) ms, lag \(lag), persist ≤ \(maxPersistDelay / 1_000_000) ms, clean \(clean)")
    }

    // MARK: - Running

    func run(steps: Int) {
        for _ in 0..<steps {
            if let k = scheduledKill, now >= k.at {
                scheduledKill = nil
                if nodes[k.node].life != .dead && nodes[k.node].life != .stopped { kill(k.node) }
            }
            chaos()
            advance(to: now + quantum)
            grow()
            checkStep()
            if !violations.isEmpty { return }
        }
    }

    /// When the master handles an event due at `at`: after its pause, if it is paused then
    /// (at the resume, or just after it when the first tick goes first).
    func masterTime(_ at: UInt64) -> UInt64 {
        at < masterPausedUntil ? masterPausedUntil + (tickFirst ? 1 : 0) : at
    }

    /// Handles every event up to `end`, earliest first.
    func advance(to end: UInt64) {
        while violations.isEmpty {
            // Events: 0 persist completes, 1 message delivered, 2 node sends, 3 node resumes, 4 master tick.
            var at = UInt64.max, kind = -1, index = 0
            if let f = inFlight, masterTime(f.completesAt) < at { at = masterTime(f.completesAt); kind = 0 }
            for i in messages.indices where masterTime(messages[i].at) < at {
                at = masterTime(messages[i].at); kind = 1; index = i
            }
            for i in nodes.indices {
                switch nodes[i].life {
                case .alive where nodes[i].nextBeat < at: at = nodes[i].nextBeat; kind = 2; index = i
                case .paused(let until) where until < at: at = until; kind = 3; index = i
                default: break
                }
            }
            if nextTick < at { at = nextTick; kind = 4 }
            guard at <= end else { break }
            now = max(now, at)
            switch kind {
            case 0: complete()
            case 1: deliver(messages.remove(at: index))
            case 2: send(index)
            case 3:
                nodes[index].life = .alive
                nodes[index].nextBeat = now
                log("\(nodes[index].id) resumes")
            default:
                nextTick += interval
                propose()
            }
        }
        now = max(now, end)
    }

    func send(_ i: Int) {
        var address = nodes[i].address
        if chance(0.03) { address = chance(0.5) ? "0.0.0.0:\(nodes[i].port)" : "127.0.0.1:0" }
        let beat = ChainManager.Beat(node: nodes[i].id, address: address, highestLSN: nodes[i].lsn,
                                     epochStart: nodes[i].startReport.map { EpochStart(epoch: $0.epoch, firstSeq: nodes[i].lsn.seq + 1) },
                                     epoch: nodes[i].configuration?.epoch ?? 0, failure: nodes[i].failure)
        let at = max(now + random(0...interval / 4), nodes[i].lastDelivery)
        nodes[i].lastDelivery = at
        if nodes[i].lastSent.map({ now - $0 > steadyGap }) ?? true { nodes[i].steadySince = now }
        nodes[i].lastSent = now
        messages.append(Message(at: at, sentAt: now, node: i, beat: beat))
        // Flaky nodes sometimes leave gaps of up to 0.8 timeouts (plus delivery jitter: still within it).
        let gap = nodes[i].flaky && chance(0.3) ? random(timeout / 2...timeout * 8 / 10) : random(interval * 6 / 10...interval * 14 / 10)
        nodes[i].nextBeat = now + gap
    }

    /// What a node makes of its configuration and history: the head of its epoch writes once
    /// its first seq is recorded, and before that reports where it will start.
    func believe(_ n: Node) {
        n.writes = false
        n.startReport = nil
        guard n.standing == .member, let c = n.configuration, c.head?.id == n.id,
              let last = n.history.last, last.epoch == c.epoch else { return }
        if last.firstSeq == nil {
            n.startReport = EpochStart(epoch: c.epoch)
        } else {
            n.writes = true
        }
    }

    func deliver(_ m: Message) {
        let i = m.node
        let expected: ChainManager.Standing = nodes[i].adding ? .joining : nodes[i].inFile
        let reply: ChainManager.Reply
        do throws(CatenaError) {
            reply = try manager.heartbeat(m.beat, now: now)
        } catch {
            // Nodes only ever run persisted configurations: the master is never behind them.
            check(false, "\(nodes[i].id)'s heartbeat at epoch \(m.beat.epoch) was refused: \(error)")
            return
        }
        nodes[i].heard = now
        nodes[i].reported = m.beat.highestLSN
        nodes[i].failureSeen = m.beat.failure == nil ? nil : nodes[i].failureSeen ?? now
        check(reply.configuration == file.configuration && reply.history == file.epochHistory,
              "the reply to \(nodes[i].id) carries epoch \(reply.configuration.epoch) \(reply.history), not the persisted \(file.epoch) \(file.epochHistory)")
        check(reply.standing == expected, "\(nodes[i].id) was told \(reply.standing), expected \(expected)")
        if let l = reply.lease {
            check(reply.standing == .member && l == settings.lease, "\(nodes[i].id) got lease \(l) as \(reply.standing)")
            check(m.beat.failure == nil, "\(nodes[i].id) got a lease while reporting a failure")
        }
        if nodes[i].life != .dead && nodes[i].life != .stopped {
            if reply.configuration.epoch >= nodes[i].configuration?.epoch ?? 0 {
                nodes[i].configuration = reply.configuration
                nodes[i].history = reply.history
            }
            if nodes[i].standing != reply.standing { log("\(nodes[i].id) is told \(reply.standing) at epoch \(reply.configuration.epoch)") }
            nodes[i].standing = reply.standing
            if let l = reply.lease { nodes[i].leaseExpiry = max(nodes[i].leaseExpiry, m.sentAt + UInt64(l.nanosecondsClamped)) }
            if reply.standing == .unknown {
                nodes[i].life = .stopped
                log("\(nodes[i].id) stops")
            }
            believe(nodes[i])
        }
        propose()
    }

    func propose() {
        let p = manager.nextProposal(now: now)
        if inFlight != nil {
            check(p == nil, "a second proposal while one is in flight")
            return
        }
        guard let p else { return }
        checkProposal(p)
        inFlight = InFlight(state: p, madeAt: now, completesAt: now + random(0...maxPersistDelay), succeeds: !chance(persistFailure))
        log("propose epoch \(p.epoch): members \(p.configuration.members.map(\.id.rawValue)), standbys \(p.standbys.map(\.id.rawValue)), history \(p.epochHistory.map { "\($0.epoch):\($0.firstSeq.map(String.init) ?? "-")" })")
    }

    func complete() {
        guard let f = inFlight else { return }
        inFlight = nil
        if f.succeeds {
            activate(f.state, at: now)
            manager.proposalPersisted(now: now)
            check(manager.state == file && manager.proposal == nil, "the manager's active state is not the persisted one")
            propose()
        } else {
            manager.proposalFailed()
            counters.failedPersists += 1
            log("persist of epoch \(f.state.epoch) failed")
        }
    }

    /// The file now holds `new`, since `at`.
    func activate(_ new: MasterState, at: UInt64) {
        let old = file
        let oldChain = chain
        check(new.problem() == nil, "the persisted state is malformed: \(new.problem() ?? "")")
        check(!new.configuration.members.isEmpty, "the persisted configuration has no members")
        check(new.epoch >= old.epoch, "epoch went back from \(old.epoch) to \(new.epoch)")
        if new.configuration.members != old.configuration.members {
            check(new.epoch > old.epoch, "the configuration changed without a new epoch")
        }
        let firsts = new.epochHistory.compactMap(\.firstSeq)
        check(firsts.allSatisfy { $0 >= 1 }, "a first seq of 0: \(new.epochHistory)")
        file = new
        indexFile()
        check(chain.contains { nodes[$0].lsn.seq >= committed },
              "epoch \(new.epoch) keeps no member holding committed seq \(committed): \(chain.map { "\(nodes[$0].id) at \(nodes[$0].lsn.seq)" })")
        for x in oldChain where nodes[x].inFile != .member {
            let n = nodes[x]
            check(n.life == .dead || n.leaseExpiry <= at,
                  "epoch \(new.epoch) without \(n.id) became active at \(ms(at)) while its lease runs until \(ms(n.leaseExpiry))")
            if n.inFile == .joining { counters.failureRemovals += 1 } else { counters.drainRemovals += 1 }
            if n.failureSeen != nil { counters.reportedFailureRemovals += 1 }
        }
        counters.joins += chain.filter { !oldChain.contains($0) }.count
        if new.epochHistory.count == old.epochHistory.count, new.epochHistory.last?.firstSeq != old.epochHistory.last?.firstSeq {
            counters.firstSeqsRecorded += 1
        }
        if chain == oldChain, new.configuration.members != old.configuration.members {
            counters.addressChanges += 1
        }
        if chain.count == 1, oldChain.count > 1, oldChain.allSatisfy({ hasFailed($0, at: at) }) {
            counters.keptLastMember += 1
        }
        log("persisted epoch \(new.epoch)")
    }

    /// Maps the file onto the nodes: ``chain`` and each node's standing in it.
    func indexFile() {
        var byName: [String: Int] = [:]
        for i in nodes.indices {
            byName[nodes[i].id.rawValue] = i
            nodes[i].inFile = .unknown
        }
        chain = file.configuration.members.map { byName[$0.id.rawValue]! }
        for i in chain { nodes[i].inFile = .member }
        for s in file.standbys { nodes[byName[s.id.rawValue]!].inFile = .joining }
        for i in nodes.indices {
            if nodes[i].inFile == .unknown { nodes[i].drained = false }
            if nodes[i].inFile != .unknown { nodes[i].adding = false }
        }
    }

    // MARK: - Chaos

    func chaos() {
        if chance(0.012), let i = pick({ $0.life != .dead && $0.life != .stopped }) {
            kill(i)
        }
        if chance(0.002) {
            // A correlated failure (a rack loses power): every member at once.
            for i in chain where nodes[i].life != .dead && nodes[i].life != .stopped { kill(i) }
        }
        if chance(0.012), let i = pick({ $0.life == .alive }) {
            // Often just about the timeout: back around when its removal is being persisted.
            let until = now + (chance(0.5) ? random(timeout * 9 / 10...timeout * 13 / 10) : random(timeout / 5...3 * timeout))
            nodes[i].life = .paused(until: until)
            log("\(nodes[i].id) pauses until \(ms(until))")
        }
        if chance(0.03), let i = pick({ $0.life == .dead }) {
            restart(i, movingTo: chance(0.3))
        }
        if scheduledKill == nil, chance(0.015), chain.count >= 2, let t = chain.last, nodes[t].life == .alive,
           nodes.contains(where: { $0.inFile == .joining && $0.life == .alive && $0.lsn.seq + lag >= nodes[t].lsn.seq }) {
            // The tail pauses just as a standby close behind it may join (it looks healthy for
            // another half timeout), and the head dies before the tail is back.
            let until = now + random(timeout * 11 / 10...2 * timeout)
            nodes[t].life = .paused(until: until)
            scheduledKill = (now + random(timeout * 4 / 10...timeout * 9 / 10), chain[0])
            counters.pausedTailsWithDeadHeads += 1
            log("tail \(nodes[t].id) pauses until \(ms(until)); head \(nodes[chain[0]].id) dies at \(ms(scheduledKill!.at))")
        }
        if chance(0.008), let i = pick({ $0.life == .alive && $0.failure == nil }) {
            // Its log fails (fsync error, disk full); it keeps heartbeating, reporting it.
            nodes[i].failure = CatenaError(.ioFailure, "injected: fsync failed")
            log("\(nodes[i].id)'s log fails at seq \(nodes[i].lsn.seq)")
        }
        if now < masterPausedUntil { return }
        if chance(0.006) { operatorAdds() }
        if chance(0.006) { operatorRemoves() }
        if !clean && chance(0.002) { restartMaster() }
        if chance(0.005) { pauseMaster() }
    }

    /// The master stops handling anything for a while: below the pause threshold (a quarter
    /// timeout) briefly enough that a live member's heartbeats still reach it within the timeout,
    /// or for up to three timeouts. Heartbeats queue meanwhile; after the resume they are handled
    /// before the first tick or after it.
    func pauseMaster() {
        let long = chance(0.7)
        let length = long ? random(timeout * 3 / 10...3 * timeout) : random(interval / 4...timeout * 12 / 100)
        masterPausedUntil = now + length
        tickFirst = chance(0.5)
        nextTick = masterPausedUntil + (tickFirst ? 0 : random(1...interval))
        if long {
            masterResumed = masterPausedUntil
            counters.masterPauses += 1
        }
        log("master pauses until \(ms(masterPausedUntil)), its first tick \(tickFirst ? "before" : "after") the queued heartbeats")
    }

    func kill(_ i: Int) {
        nodes[i].life = .dead
        nodes[i].leaseExpiry = 0
        nodes[i].lastSent = nil
        nodes[i].configuration = nil
        nodes[i].history = []
        nodes[i].standing = nil
        believe(nodes[i])
        log("\(nodes[i].id) dies at seq \(nodes[i].lsn.seq)")
    }

    func restart(_ i: Int, movingTo newPort: Bool) {
        if newPort { nodes[i].port += 100 }
        nodes[i].life = .alive
        nodes[i].failure = nil
        nodes[i].nextBeat = now + random(0...interval)
        log("\(nodes[i].id) restarts at \(nodes[i].address), seq \(nodes[i].lsn.seq)")
    }

    func operatorAdds() {
        let i: Int
        if nodes.count < 8 && chance(0.5) {
            nodes.append(Node(id: try! NodeID("n\(nodes.count + 1)"), port: 7001 + nodes.count, life: .dead,
                              lsn: .zero, flaky: chance(0.2)))
            i = nodes.count - 1
        } else if let s = pick({ $0.life == .stopped }) {
            i = s
        } else {
            return
        }
        do throws(CatenaError) {
            try manager.addNode(nodes[i].id, address: nodes[i].address)
            log("operator adds \(nodes[i].id) at \(nodes[i].address)")
            if nodes[i].inFile == .unknown { nodes[i].adding = true }
            if nodes[i].life == .stopped || nodes[i].life == .dead { restart(i, movingTo: false) }
        } catch {
            check(error.code == .invalidArgument, "add-node \(nodes[i].id): \(error)")
            log("operator cannot add \(nodes[i].id): \(error.message)")
        }
    }

    func operatorRemoves() {
        guard let i = pick({ $0.inFile != .unknown || $0.adding }) else { return }
        let isMember = nodes[i].inFile == .member
        do throws(CatenaError) {
            try manager.removeNode(nodes[i].id, now: now)
            log("operator removes \(nodes[i].id)")
            check(!isMember || chain.count > 1, "removing the only member \(nodes[i].id) was accepted")
            if nodes[i].adding {
                nodes[i].adding = false
            } else {
                nodes[i].drained = true
            }
        } catch {
            counters.refusedRemovals += 1
            check(error.code == .invalidArgument && isMember, "remove-node \(nodes[i].id): \(error)")
            log("operator cannot remove \(nodes[i].id): \(error.message)")
        }
    }

    /// The master restarts; the compare-and-swap it had in flight may or may not have happened.
    func restartMaster() {
        if let f = inFlight, chance(0.5) {
            activate(f.state, at: f.madeAt)
        }
        inFlight = nil
        masterPausedUntil = 0
        manager = ChainManager(state: file, settings: settings, now: now)
        managerStart = now
        for i in nodes.indices {
            nodes[i].heard = nil
            nodes[i].reported = nil
            nodes[i].failureSeen = nil
            nodes[i].drained = false
            nodes[i].adding = false
        }
        nextTick = now + interval
        counters.masterRestarts += 1
        log("master restarts at epoch \(file.epoch)")
    }

    /// Writes at the head, flowing down the chain; standbys catch up from the tail.
    func grow() {
        func working(_ i: Int) -> Bool { nodes[i].life == .alive && nodes[i].failure == nil }
        for n in nodes where n.life == .alive && n.failure == nil && n.writes {
            n.lsn = LSN(epoch: n.configuration!.epoch, seq: n.lsn.seq + random(0...6))
        }
        for k in chain.indices.dropFirst() {
            let p = chain[k - 1], c = chain[k]
            guard working(p) && working(c) && nodes[p].lsn.seq > nodes[c].lsn.seq else { continue }
            nodes[c].lsn = LSN(epoch: nodes[p].lsn.epoch, seq: min(nodes[p].lsn.seq, nodes[c].lsn.seq + random(0...25)))
        }
        guard let t = chain.last, working(t) else { return }
        let tail = nodes[t].lsn
        // Committed: on every member (the tail acknowledges only what its predecessors sent it;
        // a rejoined tail may hold more).
        committed = max(committed, chain.map { nodes[$0].lsn.seq }.min()!)
        for i in nodes.indices where working(i) && nodes[i].standing == .joining {
            // A rejoining node first truncates what the chain does not share, then copies.
            nodes[i].lsn = nodes[i].lsn.seq > tail.seq ? tail : LSN(epoch: tail.epoch, seq: min(tail.seq, nodes[i].lsn.seq + random(0...40)))
        }
    }

    // MARK: - Checks

    func checkProposal(_ p: MasterState) {
        let old = file
        check(manager.proposal == p, "nextProposal's result is not the manager's proposal")
        check(p.problem() == nil, "proposal is malformed: \(p.problem() ?? "")")
        check(!p.configuration.members.isEmpty, "proposal without members")
        check(p != old, "a proposal that changes nothing")
        check(p.clusterID == old.clusterID && p.chainID == old.chainID, "proposal for another chain")
        if p.configuration.members != old.configuration.members {
            check(p.epoch == old.epoch + 1, "a new configuration at epoch \(p.epoch) after \(old.epoch)")
            check(p.epochHistory.count == old.epochHistory.count + 1 && p.epochHistory.last == EpochStart(epoch: p.epoch),
                  "a new epoch without its own history entry: \(p.epochHistory)")
        } else {
            check(p.epoch == old.epoch && p.epochHistory.count == old.epochHistory.count, "epoch \(p.epoch) for an unchanged configuration at \(old.epoch)")
        }
        for (i, e) in old.epochHistory.enumerated() where i < p.epochHistory.count {
            let q = p.epochHistory[i]
            check(q.epoch == e.epoch, "history entry \(i) changed epoch")
            if e.firstSeq != nil || i < old.epochHistory.count - 1 {
                check(q.firstSeq == e.firstSeq, "the first seq of epoch \(e.epoch) changed from \(e.firstSeq.map(String.init) ?? "nil") to \(q.firstSeq.map(String.init) ?? "nil")")
            }
        }
        // First seqs may go down: a new head continues from its own log, which can end below what
        // a replaced head wrote and never got committed. Once recorded they never change (above),
        // and none is 0.
        check(p.epochHistory.allSatisfy { $0.firstSeq != 0 }, "a first seq of 0: \(p.epochHistory)")
        for m in p.configuration.members + p.standbys {
            check((try? Address(parsing: m.address)).map { !$0.isWildcard && $0.port != 0 } ?? false, "unconnectable address \(m.address) for \(m.id)")
        }

        let newNames = p.configuration.members.map(\.id.rawValue)
        let standbyNames = Set(p.standbys.map(\.id.rawValue))
        let removed = chain.filter { !newNames.contains(nodes[$0].id.rawValue) }
        for x in removed {
            let n = nodes[x]
            let failed = hasFailed(x, at: now)
            let standby = standbyNames.contains(n.id.rawValue)
            let last = n.heard.map { "\(ms(now - $0)) ago" } ?? "never"
            check(failed || n.drained, "removed \(n.id), which heartbeated \(last) and was not removed by the operator")
            check(failed || !standby, "\(n.id), drained, became a standby")
            check(n.drained || standby, "\(n.id), failed, did not become a standby")
            check(n.life == .dead || n.leaseExpiry <= now, "proposed removing \(n.id) at \(ms(now)) while its lease runs until \(ms(n.leaseExpiry))")
            // Heartbeating in time (however late the master handled its heartbeats): never removed.
            let steady = n.life == .alive && n.failureSeen == nil && n.lastSent != nil && n.steadySince + timeout <= now
            check(!steady || n.drained, "removed \(n.id), alive and heartbeating at most \(ms(steadyGap)) apart since \(ms(n.steadySince))")
        }
        let oldNames = chain.map { nodes[$0].id.rawValue }
        let joined = newNames.filter { !oldNames.contains($0) }
        check(joined.count <= 1, "several joined at once: \(joined)")
        if let name = joined.first, let t = chain.last, let j = nodes.firstIndex(where: { $0.id.rawValue == name }) {
            let tail = nodes[t]
            check(nodes[j].inFile == .joining, "\(name) joined without being a standby")
            check(newNames.last == name, "\(name) joined, but not as the tail")
            check(!removed.contains(t) && tail.heard.map { now - $0 <= timeout / 2 } == true, "\(name) joined after tail \(tail.id), which is not healthy")
            check(nodes[j].heard.map { now - $0 <= timeout } == true, "\(name) joined without a recent heartbeat")
            check(nodes[j].failureSeen == nil, "\(name) joined while reporting a failure")
            check(tail.failureSeen == nil, "\(name) joined after tail \(tail.id), which reports a failure")
            if let js = nodes[j].reported?.seq, let ts = tail.reported?.seq {
                check(js + lag >= ts, "\(name) joined at seq \(js), more than \(lag) behind tail \(tail.id) at \(ts)")
            } else {
                check(false, "\(name) joined though it or the tail never reported")
            }
        }
        check(newNames.filter { !joined.contains($0) } == chain.filter { !removed.contains($0) }.map { nodes[$0].id.rawValue },
              "the chain's order changed: \(oldNames) -> \(newNames)")
    }

    func checkStep() {
        check(manager.state == file, "the manager's state is not the persisted one")
        check(manager.proposal == inFlight?.state, "the manager's proposal is not the one in flight")
        for i in nodes.indices where nodes[i].life != .dead && nodes[i].leaseExpiry > now && nodes[i].inFile != .member {
            // A node holding a lease is a member of the active configuration: one removed can no
            // longer answer a read from an old configuration, even while it believes it is tail.
            let n = nodes[i]
            check(false, "\(n.id) holds a lease until \(ms(n.leaseExpiry)) (believing it is \(n.configuration?.role(of: n.id).map { "\($0)" } ?? "nothing") at epoch \(n.configuration?.epoch ?? 0)) but is not a member of epoch \(file.epoch)")
        }

        // A silent member is removed within the timeout, two heartbeat intervals and two
        // persists (one may be in flight when it fails) — unless it is the one kept.
        guard clean, chain.count > 1 else { return }
        if chain.contains(where: { manager.isCatchingUp(nodes[$0].id) }) { catchingUpUntil = now }
        let bound = timeout + 2 * interval + 2 * maxPersistDelay + quantum
        let everyoneFailed = chain.allSatisfy { hasFailed($0, at: now) }
        let kept = everyoneFailed ? chain.enumerated().max { (nodes[$0.element].reported ?? .zero, $0.offset) < (nodes[$1.element].reported ?? .zero, $1.offset) }?.element : nil
        for i in chain where i != kept {
            // Reporting a failure: removed once the lease it got before ran out. While a member
            // catches up, a failed one may be kept (it may hold writes the others lack).
            let last = max(nodes[i].failureSeen ?? nodes[i].heard ?? managerStart, masterResumed, catchingUpUntil)
            check(now <= last + bound, "\(nodes[i].id) has been silent since \(ms(last)) but is still a member at \(ms(now))")
        }
    }

    // MARK: - Helpers

    func hasFailed(_ i: Int, at t: UInt64) -> Bool {
        if nodes[i].failureSeen != nil { return true }
        let last = nodes[i].heard ?? managerStart
        return t > last && t - last > timeout
    }

    func ms(_ t: UInt64) -> String {
        let millis = String(t / 1_000_000 % 1000)
        return "\(t / 1_000_000_000).\(String(repeating: "0", count: 3 - millis.count))\(millis) s"
    }

    func check(_ condition: Bool, _ message: @autoclosure () -> String) {
        if !condition { violations.append("at \(ms(now)): \(message())") }
    }

    func log(_ s: @autoclosure () -> String) {
        if tracing { trace.append("\(ms(now)) \(s())") }
    }

    // Plain modular arithmetic rather than the standard library's generic `random(in:using:)`,
    // which costs more than the rest of a step in a debug build. The bias is irrelevant here.
    func chance(_ p: Double) -> Bool { rng.next() % 1_000_000 < UInt64(p * 1_000_000) }
    func random(_ r: ClosedRange<UInt64>) -> UInt64 { r.lowerBound + rng.next() % (r.upperBound - r.lowerBound + 1) }

    func pick(_ matching: (Node) -> Bool) -> Int? {
        let candidates = nodes.indices.filter { matching(nodes[$0]) }
        guard !candidates.isEmpty else { return nil }
        return candidates[Int(random(0...UInt64(candidates.count - 1)))]
    }
}
