import CatenaCore
import CatenaTestSupport

/// A client in the simulation, behaving like `CatenaClient`: it routes writes to the head and
/// reads to the tail of the configuration it fetched from the master, gives each attempt a
/// short timeout, and on a redirect, a stale epoch, an unavailable node or silence refreshes
/// the configuration and retries with backoff until its deadline — keeping a write's request id,
/// so a retry applies once. Every operation goes into the run's history: acknowledged, failed
/// for sure, or of unknown outcome.
final class SimClient {
    unowned let sim: ClusterSimulation
    let index: Int
    var configuration: ChainConfiguration?
    var stale = true
    var op: Operation?
    var gen = 0
    var count: UInt64 = 0
    /// Attempts are numbered across operations, so a late answer to an earlier operation is
    /// never taken for the current one's.
    var attempts = 0
    var finalRound: [Operation.Kind] = []
    var inFinalRound = false
    var finalDone = false

    /// The version of each key this client last wrote and had acknowledged: what its
    /// conditional writes require (and, as often, no longer find).
    var lastWritten: [String: KeyVersion] = [:]
    /// The highest LSN this client wrote or read (its session), and per key the newest version it
    /// wrote or read: what its reads in mode any must not go back from.
    var session = LSN.zero
    var floor: [String: LSN] = [:]

    /// A write whose outcome was unknown, to settle next: its key, request id and history entry.
    var toSettle: (key: String, request: RequestID, entry: Int, sentAt: UInt64)?

    struct Operation {
        enum Kind {
            case put(String, [UInt8], WriteCondition?)
            case delete(String, WriteCondition?)
            /// A read in a mode, at a member: the tail, or another chosen at random (`member` is
            /// a random number picking it from the configuration the attempt uses).
            case get(String, ReadMode, member: UInt64)
            /// Ask whether the write with the operation's request id was applied (its history
            /// entry is `entry`).
            case settle(String, entry: Int, sentAt: UInt64)

            var key: String {
                switch self {
                case .put(let k, _, _), .delete(let k, _), .get(let k, _, _), .settle(let k, _, _): k
                }
            }

            var condition: WriteCondition? {
                switch self {
                case .put(_, _, let c), .delete(_, let c): c
                case .get, .settle: nil
                }
            }
        }

        var kind: Kind
        /// When a put or delete is answered (the final round's and settlements: all).
        var ack: AckMode = .all
        var request: RequestID
        var invoke: UInt64
        var deadline: UInt64
        var attempt = 0
        /// Attempts sent so far.
        var sent = 0
        /// A refusal of a conditional write after several attempts: the write is being settled
        /// (an earlier attempt may still arrive and apply), and this refusal stands if it was not.
        var refusedPending: CatenaError?
        var backoff: UInt64 = 5_000_000
        /// Waiting for the master's configuration (this attempt).
        var askingMaster = false
    }

    init(sim: ClusterSimulation, index: Int) {
        self.sim = sim
        self.index = index
    }

    private var process: ClusterSimulation.Process { .client(index) }

    private func log(_ message: @autoclosure () -> String) { sim.log("client \(index): \(message())") }

    /// A timer fired: start the next operation, retry, or give up on a silent attempt.
    func wake(gen: Int) {
        guard gen == self.gen else { return }
        if op == nil {
            startNext()
        } else if pendingRetry == gen {
            pendingRetry = nil
            attempt()
        } else if op!.askingMaster, configuration != nil {
            // No master answered: go on with the configuration it had (the chain serves
            // without a master while the leases last).
            stale = false
            attempt()
        } else {
            // The attempt got no answer in time.
            stale = true
            retry()
        }
    }

    private func startNext() {
        let kind: Operation.Kind
        if !inFinalRound, sim.phase == .chaos, let s = toSettle {
            toSettle = nil
            op = Operation(kind: .settle(s.key, entry: s.entry, sentAt: s.sentAt), request: s.request, invoke: sim.now, deadline: sim.now + 3_000_000_000)
            attempt()
            return
        }
        toSettle = nil
        if inFinalRound {
            guard !finalRound.isEmpty else {
                finalDone = true
                return
            }
            kind = finalRound.removeFirst()
        } else {
            guard sim.phase == .chaos else { return }
            count += 1
            let key = "k\(sim.random(0..<sim.settings.keys))"
            let value = Array("c\(index)-\(count)".utf8)
            switch sim.random(0..<20) {
            case 0..<6: kind = .put(key, value, nil)
            case 6..<10: kind = .put(key, value, condition(for: key))
            case 10: kind = .delete(key, nil)
            case 11: kind = .delete(key, lastWritten[key].map { .version($0.lsn) } ?? .contentChecksum(XXH3.hash(value)))
            default: kind = randomRead(key)
            }
        }
        count += 1
        if case .put(let key, let value, _) = kind { sim.attemptedValues[key, default: []].insert(value) }
        op = Operation(kind: kind, request: RequestID(high: UInt64(index + 1), low: count), invoke: sim.now,
                       deadline: sim.now + (inFinalRound ? 10_000_000_000 : 3_000_000_000))
        if !inFinalRound {
            // Most writes are answered once committed; some once the head holds them, some once
            // the first two members do.
            switch sim.random(0..<10) {
            case 0, 1: op!.ack = .head
            case 2, 3: op!.ack = .first(2)
            default: break
            }
        }
        attempt()
    }

    /// Every client writes and reads each key once more, once the cluster has settled: each must
    /// succeed (liveness) and is checked with the rest.
    func startFinalRound() {
        inFinalRound = true
        finalRound = (0..<sim.settings.keys).flatMap { k -> [Operation.Kind] in
            [.put("k\(k)", Array("final-c\(index)-k\(k)".utf8), nil), .get("k\(k)", .linearizable, member: sim.random(0...UInt64.max))]
        }
        if op == nil {
            gen += 1
            sim.schedule(.clientWake(index, gen: gen), after: 1_000)
        }
    }

    private func attempt() {
        guard var o = op else { return }
        attempts += 1
        o.attempt = attempts
        gen += 1
        if stale || configuration == nil {
            o.askingMaster = true
            op = o
            sim.send(.getConfiguration(attempt: o.attempt), from: process, to: .master)
            sim.schedule(.clientWake(index, gen: gen), after: 200_000_000)
            return
        }
        o.askingMaster = false
        o.sent += 1
        op = o
        let target: ChainMember?
        switch o.kind {
        case .put(let k, _, _) where o.refusedPending != nil, .delete(let k, _) where o.refusedPending != nil:
            target = configuration!.head
            send(.write(.fence(requestID: o.request, key: try! Key(k), sentAt: o.invoke), attempt: o.attempt), to: target)
        case .put(let k, let v, let condition):
            target = configuration!.head
            send(.write(WriteRequest(requestID: o.request, type: .put, key: try! Key(k), value: v, condition: condition, ack: o.ack), attempt: o.attempt), to: target)
        case .delete(let k, let condition):
            target = configuration!.head
            send(.write(WriteRequest(requestID: o.request, type: .delete, key: try! Key(k), condition: condition, ack: o.ack), attempt: o.attempt), to: target)
        case .get(let k, let mode, let member):
            let members = configuration!.members
            // Each attempt at the next member, as CatenaClient takes them in turn.
            target = mode == .tail || members.isEmpty ? configuration!.tail : members[Int((member &+ UInt64(o.sent)) % UInt64(members.count))]
            if target != configuration!.tail { sim.stats.readsAtOtherMembers += 1 }
            send(.get(try! Key(k), mode, session: mode == .any && session != .zero ? session : nil, attempt: o.attempt), to: target)
        case .settle(let k, _, let sentAt):
            target = configuration!.head
            send(.write(.fence(requestID: o.request, key: try! Key(k), sentAt: sentAt), attempt: o.attempt), to: target)
        }
        sim.schedule(.clientWake(index, gen: gen), after: 300_000_000)
    }

    private func send(_ payload: ClusterSimulation.Payload, to member: ChainMember?) {
        guard let member, let i = sim.index(of: member) else { return }
        sim.send(payload, from: process, to: .node(i))
    }

    func receive(_ payload: ClusterSimulation.Payload) {
        guard let o = op else { return }
        switch payload {
        case .configuration(let c, let attempt):
            guard attempt == o.attempt, o.askingMaster else { return }
            configuration = c
            stale = false
            self.attempt()
        case .writeResult(let result, let attempt):
            guard attempt == o.attempt, !o.askingMaster else { return }
            switch result {
            case .success(let lsn):
                switch o.kind {
                case .put(let k, _, _), .delete(let k, _):
                    observe(lsn, of: k)
                default:
                    break
                }
                switch o.kind {
                case .put(let k, let v, _):
                    lastWritten[k] = KeyVersion(lsn: lsn, contentChecksum: XXH3.hash(v))
                    if o.ack == .all { sim.acknowledged.append((lsn, try! Key(k), o.request)) }
                case .delete(let k, _):
                    lastWritten[k] = nil
                    if o.ack == .all { sim.acknowledged.append((lsn, try! Key(k), o.request)) }
                case .settle(let k, _, _):
                    sim.settledApplied.append((lsn, try! Key(k), o.request))
                case .get:
                    break
                }
                if o.ack != .all {
                    // Held by the head (or the first two members), not necessarily committed:
                    // it may still be lost, and readers see it only once committed. For the
                    // history its outcome is unknown; the final check counts the lost ones.
                    sim.weakAcknowledged.append((lsn, try! Key(o.kind.key), o.request, o.ack))
                    finish(.unknown, observed: nil, weak: true)
                    return
                }
                finish(.ok, observed: nil)
            case .failure(let error):
                failed(error)
            }
        case .readResult(let result, let attempt):
            guard attempt == o.attempt, !o.askingMaster else { return }
            switch result {
            case .success(let read):
                sim.stats.readsAnswered += 1
                if case .get(let k, let mode, _) = o.kind {
                    if mode == .any, let expected = floor[k] {
                        sim.sessionReads.append((index, try! Key(k), expected, read.lsn))
                    }
                    if let lsn = read.lsn { observe(lsn, of: k) }
                }
                finish(.ok, observed: read.value)
            case .failure(let error):
                failed(error)
            }
        default:
            break
        }
    }

    /// The session saw version `lsn` of `key` (written or read).
    private func observe(_ lsn: LSN, of key: String) {
        if lsn.seq > session.seq { session = lsn }
        if lsn.seq > (floor[key]?.seq ?? 0) { floor[key] = lsn }
    }

    /// A read of `key`: mostly linearizable at any member (CRAQ), else at the tail only, else
    /// in mode any (possibly stale or dirty: kept out of the linearizability check).
    private func randomRead(_ key: String) -> Operation.Kind {
        let member = sim.random(0...UInt64.max)
        switch sim.random(0..<10) {
        case 0..<6: return .get(key, .linearizable, member: member)
        case 6..<8: return .get(key, .tail, member: member)
        default: return .get(key, .any, member: member)
        }
    }

    /// A condition for a put of `key`: the version this client last wrote (by LSN or by
    /// checksum), or — if it knows none — that the key is absent.
    private func condition(for key: String) -> WriteCondition {
        guard let last = lastWritten[key] else { return .absent }
        return sim.chance(0.5) ? .version(last.lsn) : .contentChecksum(last.contentChecksum)
    }

    private func failed(_ error: CatenaError) {
        log("attempt \(op?.attempt ?? 0) of \(op.map { "\($0.kind)" } ?? "?"): \(error)")
        if let o = op, case .settle(_, let entry, _) = o.kind, error.code == .notApplied {
            // Settled: the write never applies. Its history entry says so from now on, and the
            // checker holds the run to it.
            let e = sim.history[entry]
            sim.history[entry] = RegisterOperation(key: e.key, process: e.process, kind: e.kind, invoke: e.invoke, complete: e.complete,
                                                   outcome: .failed)
            sim.settledNotApplied.insert(o.request)
            finish(.ok, observed: nil)
            return
        }
        if var o = op, o.kind.condition != nil {
            if o.refusedPending == nil, error.code == .preconditionFailed, o.sent > 1 {
                // Like CatenaClient: an earlier attempt may still arrive and apply; settle it.
                o.refusedPending = error
                op = o
                attempt()
                return
            }
            if error.code == .notApplied, o.refusedPending != nil {
                sim.settledNotApplied.insert(o.request)
                finish(.failed, observed: nil)
                return
            }
            if error.code == .settlementExpired, o.refusedPending != nil {
                finish(.unknown, observed: nil)
                return
            }
        }
        switch error.code {
        case .redirect, .staleEpoch, .epochAhead, .unavailable, .timeout, .closed:
            stale = true
            retry()
        case .busy:
            retry()
        default:
            log("\(error)")
            finish(.failed, observed: nil)
        }
    }

    private func retry() {
        guard var o = op else { return }
        if sim.now >= o.deadline {
            finish(.unknown, observed: nil)
            return
        }
        let delay = o.backoff / 2 + sim.random(0...o.backoff / 2)
        o.backoff = min(o.backoff * 2, 200_000_000)
        op = o
        gen += 1
        pendingRetry = gen
        sim.schedule(.clientWake(index, gen: gen), after: delay)
    }

    /// The wake that starts the next attempt after a backoff (not a timeout).
    private var pendingRetry: Int?

    /// Ends the operation and records it.
    /// `weak`: a write acknowledged in a weaker mode than all (recorded as of unknown outcome,
    /// and not settled).
    private func finish(_ outcome: RegisterOperation.Outcome, observed: [UInt8]?, weak: Bool = false) {
        guard let o = op else { return }
        op = nil
        let kind: RegisterOperation.Kind
        switch o.kind {
        case .put(_, let v, _): kind = .put(v)
        case .delete: kind = .delete
        case .get: kind = .get
        case .settle:
            if outcome == .ok { sim.stats.writesSettled += 1 }
            log("\(o.kind) of \(o.request) → \(outcome)")
            gen += 1
            sim.schedule(.clientWake(index, gen: gen), after: sim.random(1_000_000...40_000_000))
            return
        }
        if let condition = o.kind.condition {
            sim.conditional[o.request] = (o.kind.key, condition, outcome)
        }
        if outcome == .unknown, case .get = o.kind {
            // A get that never answered observed nothing.
        } else if case .get(let key, .any, _) = o.kind {
            // Mode any promises no order: it may be stale, or a write never committed. It must
            // still be a value some client tried to write there.
            if outcome == .ok, let value = observed, !(sim.attemptedValues[key]?.contains(value) ?? false) {
                sim.violation("client \(index) read '\(String(decoding: value, as: UTF8.self))' from \(key) in mode any, which no client wrote there")
            }
        } else {
            sim.history.append(RegisterOperation(key: o.kind.key, process: index, kind: kind, invoke: o.invoke,
                                                 complete: sim.now, outcome: outcome, observed: observed))
            if outcome == .unknown && !weak && !inFinalRound && sim.chance(0.5) {
                toSettle = (o.kind.key, o.request, sim.history.count - 1, o.invoke)
            }
        }
        switch (outcome, o.kind.condition) {
        case (.ok, _?): sim.stats.conditionalApplied += 1
        case (.failed, _?): sim.stats.conditionalRefused += 1
        default: break
        }
        switch (outcome, o.kind) {
        case (.ok, .put), (.ok, .delete): sim.stats.writesAcknowledged += 1
        case (.unknown, .put), (.unknown, .delete): if weak { sim.stats.weakAcknowledged += 1 } else { sim.stats.writesUnknown += 1 }
        default: break
        }
        if inFinalRound && outcome != .ok {
            sim.violation("client \(index)'s final \(o.kind) did not succeed (\(outcome)) after the cluster settled: \(sim.describe())")
        }
        log("\(o.kind) → \(outcome)\(observed.map { " \(String(decoding: $0, as: UTF8.self))" } ?? "")")
        gen += 1
        sim.schedule(.clientWake(index, gen: gen), after: inFinalRound ? 1_000 : sim.random(1_000_000...40_000_000))
    }
}
