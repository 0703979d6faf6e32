import CatenaCore
import CatenaMaster
import DequeModule

/// A node's log on a simulated disk: the records in order (seq 1, 2, …: the simulation does
/// not compact), of which a prefix is durable, and the configuration persisted as seen.
struct SimDisk {
    var records: [EncodedRecord] = []
    var durable = 0
    var seen: SeenChain?
    var syncScheduled = false
    var syncTarget = 0
    /// After a failed fsync the records from here on are only in the page cache (Linux marks
    /// them clean): reads see them, no later sync saves them, a crash loses them.
    var ghostFrom: Int?
    /// What the store records when an fsync fails (`SYNCFAILED`): the last durable record then.
    var syncFailedAt: Int?
    /// A group commit ends no earlier than this (a targeted fault holds it back).
    var syncHeldUntil: UInt64 = 0
    /// Records once durable here were lost (an operator restored an old backup): only then may
    /// the node rightly take its log for corrupt.
    var lostDurable = false

    var end: LSN { records.last?.lsn ?? .zero }

    /// The request ids of every record (the simulation never compacts, and its runs are
    /// shorter than the request window): what `Store.recentRequests(window:)` returns.
    var recentRequests: [ReplicaStateMachine.RememberedRequest] {
        records.compactMap { r in
            r.header.requestID == .none ? nil
                : ReplicaStateMachine.RememberedRequest(requestID: r.header.requestID, lsn: r.lsn, timestamp: r.header.timestamp,
                                                        fence: r.type == .fence)
        }
    }
    var durableEnd: LSN { durable == 0 ? .zero : records[durable - 1].lsn }

    /// The newest durable version of `key` as a conditional write compares it (what the store's
    /// index holds), or nil if absent.
    func version(of key: Key) -> KeyVersion? {
        for r in records[..<durable].reversed() where r.type.isVersion && r.key == key {
            return r.header.type == .delete ? nil : KeyVersion(lsn: r.lsn, contentChecksum: r.header.contentChecksum)
        }
        return nil
    }

    /// The newest durable version of `key`: its LSN (nil: the key has no version here, not even
    /// a tombstone) and its value (nil: absent or deleted) — what the store's index serves.
    func newest(_ key: Key) -> (lsn: LSN?, value: [UInt8]?) {
        for r in records[..<durable].reversed() where r.key == key && r.type.isVersion {
            return (r.lsn, r.header.type == .delete ? nil : Self.value(of: r))
        }
        return (nil, nil)
    }

    /// The durable version of `key` at exactly `lsn`: `.some(value)` (nil for a tombstone), or
    /// nil if this log holds no such version of the key.
    func read(_ key: Key, at lsn: LSN) -> [UInt8]?? {
        guard lsn.seq >= 1, lsn.seq <= UInt64(durable) else { return nil }
        let r = records[Int(lsn.seq) - 1]
        guard r.lsn == lsn, r.key == key, r.type.isVersion else { return nil }
        return .some(r.header.type == .delete ? nil : Self.value(of: r))
    }

    private static func value(of r: EncodedRecord) -> [UInt8] {
        Array(r.bytes[r.header.valueOffset..<(r.header.valueOffset + r.header.valueLength)])
    }
}

/// One storage node's process in the simulation: the interpreter of its ``NodeStateMachine``
/// over the simulated disk and network — the simulation's twin of the real node's `Replica`
/// actor, `ReplicationLink`, heartbeat loop and catch-up receiver. It decides nothing itself.
final class SimNode {
    unowned let sim: ClusterSimulation
    let index: Int
    let id: NodeID
    let member: ChainMember
    var inc = 0
    var life = Life.alive
    /// An operator removed it and the master forgot it: it stopped for good.
    var removed = false
    /// An operator asked to remove it.
    var removing = false
    var disk = SimDisk()
    var failNextSync = false
    var diskFull = false
    /// The last epoch in which this node was offered to the targeted crash of a new head.
    var targetedEpoch: UInt64 = 0
    private var saidFalseCorruption = false
    /// When healing, the operator restarts a failed node at most once a second.
    var restartableAt: UInt64 = 0

    // The process: lost when it dies.
    var machine: NodeStateMachine!
    var view = NodeStateMachine.View()
    var waiters: [(request: RequestID, client: Int, attempt: Int)] = []
    var throttled: [(request: WriteRequest, client: Int, attempt: Int)] = []
    var link: Link?
    var linkGen = 0
    var upstream: (node: NodeID, conn: Int)?
    var catchUp: CatchUp?
    var catchUpGen = 0
    var catchUpRequests = 0
    var slow = Deque<NodeStateMachine.Action>()
    var slowBusy = false
    /// A stop of the catch-up waits for what it installed to be durable.
    var stopWaitsForSync = false
    var beatInFlight: UInt64?
    /// Reads waiting for the tail's answer to a version query, by query number.
    var versionQueries: [Int: (key: Key, client: Int, attempt: Int)] = [:]
    var nextQuery = 0
    /// The highest epoch this node ever adopted (across restarts): configurations only move forward.
    var highestAdopted: UInt64 = 0

    struct Link {
        var target: ChainMember
        var conn: Int?
        /// The successor reported its position on `conn`: what is queued may be sent.
        var ready = false
        var queue = Deque<LinkWork>()
        var backoff: UInt64 = 20_000_000
    }

    enum LinkWork {
        case records([EncodedRecord])
        case fromLog(after: LSN, through: LSN)
    }

    struct CatchUp {
        var source: ChainMember
        var fullCopy: Bool
        var gen: Int
        var backoff: UInt64 = 20_000_000
        var request: Int?
        var waitingForSync = false
    }

    init(sim: ClusterSimulation, index: Int) {
        self.sim = sim
        self.index = index
        self.id = try! NodeID("n\(index + 1)")
        self.member = ChainMember(id: id, address: "10.0.0.\(index + 1):7000")
    }

    var process: ClusterSimulation.Process { .node(index) }

    func running(_ incarnation: Int) -> Bool { incarnation == inc && life.isUp && !removed }

    private func log(_ message: @autoclosure () -> String) { sim.log("\(id): \(message())") }

    // MARK: - Life

    /// Starts the process over what its disk holds.
    func start() {
        machine = NodeStateMachine(me: id, settings: sim.nodeSettings, logEnd: disk.end, recentRequests: disk.recentRequests, seen: disk.seen)
        view = NodeStateMachine.View()
        sim.schedule(.nodeBeat(index, inc: inc), after: sim.random(0...sim.settings.heartbeatInterval))
    }

    /// The process dies: everything not synced may be lost (a random prefix of it survives, or
    /// none of it if `losingAllUnsynced`).
    func kill(losingAllUnsynced: Bool = false) {
        var keep = disk.durable + (losingAllUnsynced ? 0 : Int(sim.random(0...UInt64(disk.records.count - disk.durable))))
        if let ghosts = disk.ghostFrom, keep > ghosts {
            // A crash takes the page cache with it (modelled for every kill: the worst case).
            keep = ghosts
            disk.ghostFrom = nil
        }
        log("killed; log \(disk.end) (\(disk.durable) durable), \(keep) records survive")
        disk.records.removeLast(disk.records.count - keep)
        disk.durable = keep
        disk.syncScheduled = false
        disk.syncHeldUntil = 0
        inc += 1
        life = .dead
        if let link, let c = link.conn { sim.breakConnection(c) }
        if let up = upstream { sim.breakConnection(up.conn) }
        link = nil
        upstream = nil
        catchUp = nil
        slow = []
        slowBusy = false
        stopWaitsForSync = false
        waiters = []
        throttled = []
        beatInFlight = nil
        versionQueries = [:]
    }

    /// Starts again on its disk (the store syncs what it recovered at open).
    func restart() {
        life = .alive
        failNextSync = false
        if let durable = disk.syncFailedAt {
            // The store's open: after a failed fsync, what followed the last durable record is
            // not trusted, whatever the page cache shows.
            if disk.records.count > durable { disk.records.removeLast(disk.records.count - durable) }
            disk.syncFailedAt = nil
            disk.ghostFrom = nil
        }
        disk.durable = disk.records.count
        log("restarts on a log ending at \(disk.end)")
        start()
    }

    // MARK: - Performing the machine's actions

    /// Performs `actions` in order; returns the first refusal of a replication message.
    @discardableResult
    func perform(_ actions: [NodeStateMachine.Action]) -> CatenaError? {
        var replicationError: CatenaError?
        var pending = Deque(actions)
        while let action = pending.popFirst() {
            switch action {
            case .replica(let r):
                switch r {
                case .append(let records):
                    if diskFull {
                        pending = Deque(machine.logFailed(CatenaError(.diskFull, "simulated disk full")))
                        continue
                    }
                    disk.records += records
                    scheduleSync()
                case .forward(let records, let to):
                    enqueue(.records(records), to: to)
                case .resend(let after, let through, let to):
                    enqueue(.fromLog(after: after, through: through), to: to)
                case .acknowledge(let through, let held, let to):
                    if let up = upstream, up.node == to.id {
                        sim.sendRepl(up.conn, toPredecessor: true, .acknowledge(through, held: held, epoch: machine.epoch))
                    }
                case .committed(let commits), .held(let commits):
                    for c in commits { answer(c.requestID, .success(c.lsn)) }
                case .refuse(let id?, let error):
                    answer(id, .failure(error))
                case .refuse(nil, let error):
                    if replicationError == nil { replicationError = error }
                }
            case .connectSuccessor(let member):
                linkTo(member)
            case .disconnectSuccessor:
                closeLink()
            case .clearSuccessorQueue:
                link?.queue = []
            case .disconnectPredecessor:
                if let up = upstream { sim.breakConnection(up.conn) }
                upstream = nil
            case .answerAll(let error):
                let all = waiters
                waiters = []
                for w in all { sim.send(.writeResult(.failure(error), attempt: w.attempt), from: process, to: .client(w.client)) }
            case .throttled:
                break
            case .wakeThrottled:
                let all = throttled
                throttled = []
                for t in all { write(t.request, client: t.client, attempt: t.attempt) }
            case .publish(let v):
                if let e = v.configuration?.epoch {
                    if e < highestAdopted {
                        sim.violation("\(id) adopted epoch \(e) after epoch \(highestAdopted)")
                    }
                    highestAdopted = max(highestAdopted, e)
                }
                view = v
            case .startCatchUp(let from, let fullCopy, let after):
                catchUpGen += 1
                catchUp = CatchUp(source: from, fullCopy: fullCopy, gen: catchUpGen)
                sim.schedule(.catchUpStep(index, inc: inc, gen: catchUpGen), after: after)
            case .stop:
                log("the master forgot this node: it stops")
                kill()
                removed = true
                return replicationError
            case .awaitAdding:
                log("waits to be added")
            case .note(let note):
                log("\(note.level): \(note.message)")
            case .persistSeen, .truncateToShared, .discardLog, .loadLog, .stopCatchUp:
                slow.append(action)
                startSlow()
            }
        }
        if let failure = machine.failure, failure.code == .corruption, !disk.lostDurable, !saidFalseCorruption {
            saidFalseCorruption = true
            sim.violation("\(id) took its log for one that lost records, though it never lost a durable record: \(failure)")
        }
        if life == .alive, let replica = machine.replica, replica.role?.takesWrites == true, targetedEpoch != replica.configuration.epoch,
           machine.history.firstSeq(of: replica.configuration.epoch) == nil, disk.durable < disk.records.count {
            targetedEpoch = replica.configuration.epoch
            sim.newHeadOverAnUndurableLog(index)
        }
        return replicationError
    }

    private func answer(_ request: RequestID, _ result: Result<LSN, CatenaError>) {
        var keep: [(request: RequestID, client: Int, attempt: Int)] = []
        for w in waiters {
            if w.request == request {
                sim.send(.writeResult(result, attempt: w.attempt), from: process, to: .client(w.client))
            } else {
                keep.append(w)
            }
        }
        waiters = keep
    }

    // MARK: - The disk

    private func scheduleSync() {
        guard !disk.syncScheduled else { return }
        disk.syncScheduled = true
        disk.syncTarget = disk.records.count
        let delay = sim.chance(0.05) ? sim.random(5_000_000...30_000_000) : sim.random(100_000...1_500_000)
        sim.schedule(.nodeSync(index, inc: inc), after: delay)
    }

    /// A group commit ended: what was written when it began is durable (or the fsync failed).
    func synced() {
        if sim.now < disk.syncHeldUntil {
            sim.schedule(.nodeSync(index, inc: inc), after: disk.syncHeldUntil - sim.now)
            return
        }
        disk.syncScheduled = false
        if failNextSync {
            failNextSync = false
            log("fsync fails")
            disk.ghostFrom = min(disk.ghostFrom ?? disk.durable, disk.durable)
            disk.syncFailedAt = disk.syncFailedAt ?? disk.durable
            perform(machine.logFailed(CatenaError(.ioFailure, "simulated fsync failure")))
            return
        }
        let before = disk.durable
        disk.durable = max(disk.durable, min(disk.syncTarget, disk.records.count))
        if disk.records.count > disk.durable { scheduleSync() }
        if disk.durable > before {
            // A record exists once it is durable somewhere (one lost in a crash before that
            // never was): from then on its LSN names it alone.
            sim.register(Array(disk.records[before..<disk.durable]), at: index)
            perform(machine.durable(through: disk.durableEnd))
        }
        if let c = catchUp, c.waitingForSync, disk.durable == disk.records.count {
            catchUp?.waitingForSync = false
            catchUpStep(gen: c.gen)
        }
        if stopWaitsForSync, disk.durable == disk.records.count {
            stopWaitsForSync = false
            slowDone()
        }
    }

    // MARK: - Slow actions

    private func startSlow() {
        guard !slowBusy, let action = slow.first else { return }
        slowBusy = true
        switch action {
        case .stopCatchUp:
            // What the catch-up installed must be durable before it counts as stopped.
            catchUp = nil
            catchUpGen += 1
            if disk.durable == disk.records.count {
                sim.schedule(.nodeSlowDone(index, inc: inc), after: 10_000)
            } else {
                stopWaitsForSync = true
            }
        case .persistSeen, .loadLog:
            sim.schedule(.nodeSlowDone(index, inc: inc), after: sim.random(200_000...3_000_000))
        default:
            sim.schedule(.nodeSlowDone(index, inc: inc), after: sim.random(1_000_000...6_000_000))
        }
    }

    /// The slow action at the front of the queue completes: its effect, then the machine's event.
    func slowDone() {
        guard slowBusy, let action = slow.popFirst() else { return }
        slowBusy = false
        switch action {
        case .persistSeen(let seen):
            if diskFull {
                perform(machine.logFailed(CatenaError(.diskFull, "simulated disk full")))
            } else {
                disk.seen = seen
                perform(machine.configurationPersisted(epoch: seen.configuration.epoch, logEnd: disk.end, now: sim.now))
            }
        case .truncateToShared(let history, let keeping):
            let records = disk.records
            let shared = history.lastShared(myLastSeq: UInt64(records.count), keeping: keeping.seq) { seq in
                records[Int(seq) - 1].lsn.epoch
            }
            let removed = truncate(after: Int(shared))
            perform(machine.truncated(end: disk.end, removed: removed))
        case .discardLog:
            let removed = truncate(after: 0)
            sim.stats.discards += 1
            perform(machine.truncated(end: disk.end, removed: removed))
        case .loadLog:
            perform(machine.logLoaded(end: disk.end, recentRequests: disk.recentRequests))
        case .stopCatchUp:
            break
        default:
            break
        }
        startSlow()
    }

    private func truncate(after count: Int) -> Int {
        let removed = disk.records.count - count
        guard removed > 0 else { return 0 }
        sim.stats.truncations += 1
        log("truncates \(removed) records after seq \(count)")
        disk.records.removeLast(removed)
        disk.durable = min(disk.durable, count)
        disk.syncTarget = min(disk.syncTarget, count)
        if let ghosts = disk.ghostFrom, ghosts >= count { disk.ghostFrom = nil }
        return removed
    }

    // MARK: - The master

    /// The heartbeat timer: say where this node is, and learn the configuration.
    func beat() {
        perform(machine.tick(now: sim.now))
        sendBeat()
        sim.schedule(.nodeBeat(index, inc: inc), after: sim.settings.heartbeatInterval * sim.random(8...12) / 10)
    }

    private func sendBeat() {
        guard life.isUp else { return }
        let beat = ChainManager.Beat(node: id, address: member.address, highestLSN: machine.positionToReport(durable: disk.durableEnd, logEnd: disk.end),
                                     epochStart: machine.epochStartToReport, epoch: machine.heartbeatEpoch, failure: machine.failure,
                                     leaseless: machine.reportLeaseless(sentAt: sim.now), sentAt: sim.now, incarnation: UInt64(inc))
        beatInFlight = sim.now
        sim.send(.heartbeat(beat, sentAt: sim.now), from: process, to: .master)
        sim.schedule(.nodeBeatTimeout(index, inc: inc, sentAt: sim.now), after: 2 * sim.settings.heartbeatInterval * 5)
    }

    func beatTimedOut(sentAt: UInt64) {
        if beatInFlight == sentAt { beatInFlight = nil }
    }

    private func heartbeatReplied(_ reply: ChainManager.Reply, sentAt: UInt64) {
        if beatInFlight == sentAt { beatInFlight = nil }
        let standing: NodeStateMachine.Standing = switch reply.standing {
        case .member: .member
        case .joining: .joining
        case .unknown: .unknown
        }
        let before = machine.epochStartToReport
        perform(machine.heartbeatReplied(.init(configuration: reply.configuration, standing: standing, lease: reply.lease,
                                                history: EpochHistory(reply.history)),
                                          sentAt: sentAt, logEnd: disk.end, now: sim.now))
        // A new head reports where its epoch starts at once.
        if life.isUp, !removed, let start = machine.epochStartToReport, start != before { sendBeat() }
    }

    // MARK: - Requests

    func receive(_ payload: ClusterSimulation.Payload, from: ClusterSimulation.Process) {
        switch payload {
        case .heartbeatReply(let reply, let sentAt):
            heartbeatReplied(reply, sentAt: sentAt)
        case .write(let request, let attempt):
            guard case .client(let c) = from else { return }
            write(request, client: c, attempt: attempt)
        case .get(let key, let mode, let session, let attempt):
            guard case .client(let c) = from else { return }
            startRead(key, mode: mode, session: session, client: c, attempt: attempt)
        case .versionQuery(let key, let query):
            guard case .node(let asker) = from else { return }
            answerVersionQuery(key, query: query, from: asker)
        case .versionReply(let result, let query):
            versionReplied(result, query: query)
        case .catchUpRequest(let after, let request):
            serveCatchUp(after: after, request: request, to: from)
        case .catchUpReply(let result, let request):
            catchUpReplied(result, request: request)
        default:
            break
        }
    }

    func write(_ request: WriteRequest, client: Int, attempt: Int) {
        let disk = self.disk
        let actions = machine.write(request, now: sim.now, wallClock: sim.now, durableVersion: { disk.version(of: $0) })
        if actions == [.throttled] {
            throttled.append((request, client, attempt))
            return
        }
        if actions.count == 1, case .replica(.refuse(_, let error)) = actions[0] {
            sim.send(.writeResult(.failure(error), attempt: attempt), from: process, to: .client(client))
            return
        }
        if actions.count == 1, case .replica(.committed(let commits)) = actions[0] {
            sim.send(.writeResult(.success(commits[0].lsn), attempt: attempt), from: process, to: .client(client))
            return
        }
        waiters.append((request.requestID, client, attempt))
        perform(actions)
    }

    /// A read: role, lease and read block checked, the store read, and — for a key whose newest
    /// version here may not be committed — the tail asked which version is (then that version
    /// served from this log); after a moment in which the node may be paused, the lease checked
    /// again.
    private func startRead(_ key: Key, mode: ReadMode, session: LSN?, client: Int, attempt: Int) {
        do throws(CatenaError) {
            try view.checkReads(mode, at: sim.now, me: id)
            // The real node waits briefly first; here the client simply tries the next member.
            guard view.holdsSession(session, mode: mode, applied: disk.durableEnd) else {
                throw CatenaError(.unavailable, "\(id) holds its log through \(disk.durableEnd), not yet through the session's \(session ?? .zero)")
            }
        } catch {
            sim.send(.readResult(.failure(error), attempt: attempt), from: process, to: .client(client))
            return
        }
        let (version, value) = disk.newest(key)
        if let tail = view.committedVersionSource(mode: mode, version: version, committed: machine.commitWatermark) {
            guard let t = sim.index(of: tail) else {
                sim.send(.readResult(.failure(CatenaError(.unavailable, "no tail to ask")), attempt: attempt), from: process, to: .client(client))
                return
            }
            nextQuery += 1
            versionQueries[nextQuery] = (key, client, attempt)
            sim.stats.versionQueries += 1
            sim.send(.versionQuery(key, query: nextQuery), from: process, to: .node(t))
            return
        }
        let job = ReadJob(reply: .client(client, attempt: attempt, ReadValue(value: value, lsn: version)))
        sim.schedule(.readDone(index, inc: inc, job), after: sim.random(10_000...500_000))
    }

    /// The tail's side of a version query: answered as a read in mode `tail`.
    private func answerVersionQuery(_ key: Key, query: Int, from asker: Int) {
        do throws(CatenaError) {
            try view.checkReads(.tail, at: sim.now, me: id)
        } catch {
            sim.send(.versionReply(.failure(error), query: query), from: process, to: .node(asker))
            return
        }
        let job = ReadJob(reply: .versionQuery(node: asker, query: query, version: disk.version(of: key)?.lsn))
        sim.schedule(.readDone(index, inc: inc, job), after: sim.random(10_000...200_000))
    }

    /// The tail said which version of a dirty key is committed: serve that one from this log.
    private func versionReplied(_ result: Result<LSN?, CatenaError>, query: Int) {
        guard let read = versionQueries.removeValue(forKey: query) else { return }
        let value: [UInt8]?
        var version: LSN?
        switch result {
        case .failure(let error):
            let unavailable = CatenaError(.unavailable, "the tail could not say which version is committed: \(error)")
            sim.send(.readResult(.failure(unavailable), attempt: read.attempt), from: process, to: .client(read.client))
            return
        case .success(nil):
            value = nil
        case .success(let lsn?):
            guard let held = disk.read(read.key, at: lsn) else {
                let unavailable = CatenaError(.unavailable, "\(id) does not hold the committed version \(lsn) of '\(read.key)'")
                sim.send(.readResult(.failure(unavailable), attempt: read.attempt), from: process, to: .client(read.client))
                return
            }
            value = held
            version = lsn
        }
        let job = ReadJob(reply: .client(read.client, attempt: read.attempt, ReadValue(value: value, lsn: version)))
        sim.schedule(.readDone(index, inc: inc, job), after: sim.random(10_000...200_000))
    }

    func finishRead(_ job: ReadJob) {
        let lease = Result { () throws(CatenaError) in try view.checkLease(at: sim.now, me: id) }
        switch job.reply {
        case .client(let client, let attempt, let read):
            sim.send(.readResult(lease.map { read }, attempt: attempt), from: process, to: .client(client))
        case .versionQuery(let node, let query, let version):
            sim.send(.versionReply(lease.map { version }, query: query), from: process, to: .node(node))
        }
    }

    // MARK: - Replication: the successor's side

    /// The predecessor `pred` opened a connection.
    func accept(connection: Int, from pred: Int) {
        let predID = sim.nodes[pred].id
        guard let start = machine.upstreamStart(for: predID) else {
            sim.breakConnection(connection)
            return
        }
        if let old = upstream { sim.breakConnection(old.conn) }
        upstream = (predID, connection)
        sim.sendRepl(connection, toPredecessor: true, .position(start.position, epoch: start.epoch))
        if start.acknowledged != .zero {
            sim.sendRepl(connection, toPredecessor: true, .acknowledge(start.acknowledged, held: [], epoch: start.epoch))
        }
    }

    func receiveRepl(_ message: ReplMessage, on conn: Int, toPredecessor: Bool) {
        if toPredecessor {
            guard let link, link.conn == conn else { return sim.breakConnection(conn) }
            let target = link.target.id
            switch message {
            case .position(let lsn, let epoch):
                if let error = perform(machine.successorReported(lsn, epoch: epoch, from: target)) {
                    log("successor \(target) refused: \(error)")
                    sim.breakConnection(conn)
                    return
                }
                self.link?.ready = true
                self.link?.backoff = 20_000_000
                sim.sendRepl(conn, toPredecessor: false, .readTarget(machine.lastAccepted ?? disk.end))
                pumpLink()
            case .acknowledge(let lsn, let held, let epoch):
                if let error = perform(machine.acknowledged(through: lsn, held: held, epoch: epoch, from: target)) {
                    log("acknowledgement refused: \(error)")
                    sim.breakConnection(conn)
                }
            default:
                sim.breakConnection(conn)
            }
        } else {
            guard let up = upstream, up.conn == conn else { return sim.breakConnection(conn) }
            switch message {
            case .replicate(let records, let epoch):
                if let error = perform(machine.replicate(records, epoch: epoch, from: up.node)) {
                    log("replication from \(up.node) refused: \(error)")
                    sim.breakConnection(conn)
                }
            case .readTarget(let lsn):
                perform(machine.readTarget(lsn, from: up.node))
            default:
                sim.breakConnection(conn)
            }
        }
    }

    func connectionClosed(_ conn: Int) {
        if let up = upstream, up.conn == conn { upstream = nil }
        if let link, link.conn == conn {
            self.link?.conn = nil
            self.link?.ready = false
            let backoff = link.backoff
            self.link?.backoff = min(backoff * 2, 1_000_000_000)
            sim.schedule(.linkConnect(index, inc: inc, gen: linkGen), after: backoff)
        }
    }

    // MARK: - Replication: the predecessor's side

    /// Keeps a link to `member` (a new one if the link goes elsewhere).
    private func linkTo(_ member: ChainMember) {
        guard link?.target != member else { return }
        closeLink()
        link = Link(target: member)
        linkGen += 1
        sim.schedule(.linkConnect(index, inc: inc, gen: linkGen), after: sim.random(100_000...1_000_000))
    }

    private func enqueue(_ work: LinkWork, to member: ChainMember) {
        linkTo(member)
        link!.queue.append(work)
        pumpLink()
    }

    private func closeLink() {
        if let c = link?.conn { sim.breakConnection(c) }
        link = nil
        linkGen += 1
    }

    func connectLink(gen: Int) {
        guard gen == linkGen, let link, link.conn == nil else { return }
        guard let succ = sim.index(of: link.target) else { return }
        self.link?.conn = sim.openConnection(from: index, to: succ)
    }

    /// Sends what the link queues, once the successor reported its position on this connection.
    private func pumpLink() {
        guard let link, link.ready, let conn = link.conn else { return }
        var queue = link.queue
        self.link!.queue = []
        while let work = queue.popFirst() {
            switch work {
            case .records(let records):
                sim.sendRepl(conn, toPredecessor: false, .replicate(records, epoch: view.epoch))
            case .fromLog(let after, let through):
                let from = Int(after.seq), to = min(Int(through.seq), disk.durable)
                if to > from {
                    sim.sendRepl(conn, toPredecessor: false, .replicate(Array(disk.records[from..<to]), epoch: view.epoch))
                }
            }
        }
    }

    // MARK: - Catch-up

    /// The source's side: the durable records after `after`, if this node is the tail and its
    /// log continues `after`.
    private func serveCatchUp(after: LSN, request: Int, to: ClusterSimulation.Process) {
        let result: Result<[EncodedRecord], CatenaError>
        do throws(CatenaError) {
            try view.checkCatchUpSource()
            let seq = Int(after.seq)
            guard seq <= disk.durable, seq == 0 || disk.records[seq - 1].lsn == after else {
                throw CatenaError(.lsnOutOfOrder, "\(after) is not in \(id)'s durable log (it ends at \(disk.durableEnd))")
            }
            result = .success(Array(disk.records[seq..<min(disk.durable, seq + 32)]))
        } catch {
            result = .failure(error)
        }
        sim.send(.catchUpReply(result, request: request), from: process, to: to)
    }

    /// The joiner's side: asks the source for what follows its durable log.
    func catchUpStep(gen: Int) {
        guard let c = catchUp, c.gen == gen, c.request == nil else { return }
        guard disk.durable == disk.records.count else {
            catchUp?.waitingForSync = true
            return
        }
        guard let source = sim.index(of: c.source) else { return }
        catchUpRequests += 1
        catchUp?.request = catchUpRequests
        sim.send(.catchUpRequest(after: disk.durableEnd, request: catchUpRequests), from: process, to: .node(source))
        sim.schedule(.catchUpTimeout(index, inc: inc, request: catchUpRequests), after: 500_000_000)
    }

    func catchUpTimedOut(request: Int) {
        guard let c = catchUp, c.request == request else { return }
        catchUp?.request = nil
        retryCatchUp()
    }

    private func retryCatchUp() {
        guard let c = catchUp else { return }
        catchUp?.backoff = min(c.backoff * 2, 1_000_000_000)
        sim.schedule(.catchUpStep(index, inc: inc, gen: c.gen), after: c.backoff)
    }

    private func catchUpReplied(_ result: Result<[EncodedRecord], CatenaError>, request: Int) {
        guard let c = catchUp, c.request == request else { return }
        catchUp?.request = nil
        switch result {
        case .failure(let error) where error.code == .lsnOutOfOrder || error.code == .historyCompacted:
            catchUp = nil
            perform(machine.catchUpFailed(error))
        case .failure:
            retryCatchUp()
        case .success(let records):
            guard let first = records.first else {
                // At the source's end: ask again shortly (the real source long-polls).
                sim.schedule(.catchUpStep(index, inc: inc, gen: c.gen), after: sim.random(20_000_000...100_000_000))
                return
            }
            guard first.lsn.seq == UInt64(disk.records.count) + 1 else { return retryCatchUp() }
            if diskFull {
                catchUp = nil
                perform(machine.catchUpFailed(CatenaError(.diskFull, "simulated disk full")))
                return
            }
            catchUp?.backoff = 20_000_000
            sim.stats.catchUpRecords += records.count
            disk.records += records
            scheduleSync()
            catchUp?.waitingForSync = true
        }
    }
}
