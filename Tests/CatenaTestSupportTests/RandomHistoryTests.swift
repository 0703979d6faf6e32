import CatenaCore
import CatenaTestSupport
import Testing

/// Seeded random histories of a real register, which are linearizable by construction, and
/// mutations of them that provably are not.
@Suite("Linearizability checker: random histories")
struct RandomHistoryTests {
    /// 200 seeds in 4 groups; 2 to 32 processes, up to 350 operations over 1 to 3 keys.
    @Test(arguments: 0..<4)
    func simulatedHistoriesAreLinearizable(group: Int) {
        for seed in UInt64(group * 50)..<UInt64(group * 50 + 50) {
            let history = SimulatedHistory(seed: seed)
            let result = LinearizabilityChecker.check(history.operations)
            #expect(result == .linearizable, "seed \(seed): \(result)")
        }
    }

    /// A get that returns a value nobody wrote: never linearizable.
    @Test(arguments: 0..<4)
    func readOfAValueNobodyWroteIsCaught(group: Int) throws {
        for seed in UInt64(group * 50)..<UInt64(group * 50 + 50) {
            var history = SimulatedHistory(seed: seed)
            var rng = SplitMix64(seed: ~seed)
            let reads = history.operations.indices.filter { history.operations[$0].isAnsweredGet }
            guard let r = reads.randomElement(using: &rng) else { continue }
            let mutated = history.replaceObserved(at: r, with: SimulatedHistory.neverWritten)
            let key = String(decoding: mutated.key, as: UTF8.self)
            let result = LinearizabilityChecker.check(history.operations)
            guard case .notLinearizable(key, let explanation) = result else {
                Issue.record("seed \(seed): \(mutated) must fail, got \(result)")
                continue
            }
            #expect(explanation.contains("\(mutated): no put of that value had been invoked by the time it returned"), "seed \(seed): \(explanation)")
        }
    }

    /// A get that returns a value that was overwritten before it began: never linearizable.
    /// The mutation picks a get r, an acknowledged write w2 that completed before r was invoked,
    /// and an acknowledged put w that completed before w2 was invoked, and makes r return w's
    /// value. Values are unique, so only w wrote it; w must precede w2 and w2 must precede r
    /// (real time), and w2 wrote something else — so no order lets r see w's value. Unlike a value
    /// nobody wrote, this needs the search to find out.
    @Test(arguments: 0..<4)
    func readOfAnOverwrittenValueIsCaught(group: Int) throws {
        var mutatedSeeds = 0
        for seed in UInt64(group * 50)..<UInt64(group * 50 + 50) {
            var history = SimulatedHistory(seed: seed)
            var rng = SplitMix64(seed: ~seed)
            guard let (r, value) = history.overwrittenValue(using: &rng) else { continue }
            mutatedSeeds += 1
            let mutated = history.replaceObserved(at: r, with: value)
            let key = String(decoding: mutated.key, as: UTF8.self)
            let result = LinearizabilityChecker.check(history.operations)
            guard case .notLinearizable(key, let explanation) = result else {
                Issue.record("seed \(seed): \(mutated) must fail, got \(result)")
                continue
            }
            // The history is linearizable up to the response before r's: r is the culprit.
            #expect(explanation.contains("It cannot be explained: \(mutated)"), "seed \(seed): \(explanation)")
            #expect(explanation.contains("it is."), "seed \(seed): \(explanation)")
        }
        #expect(mutatedSeeds > 40, "too few seeds had a read to mutate")
    }

    /// A long history at realistic concurrency checks with the default bound.
    @Test func largeHistoryChecksWithinTheDefaultBound() {
        let history = SimulatedHistory(seed: 7, processes: 16, operations: 2000, keys: 1)
        #expect(history.operations.count == 2000)
        #expect(LinearizabilityChecker.check(history.operations) == .linearizable)
    }

    /// And so does a long one with an error near its end, including the explanation's searches.
    @Test func largeHistoryWithAStaleReadIsCaught() throws {
        var history = SimulatedHistory(seed: 8, processes: 32, operations: 3000, keys: 1)
        var rng = SplitMix64(seed: 8)
        let end = history.operations.map(\.invoke).max()!
        let (r, value) = try #require(history.overwrittenValue(using: &rng, after: end / 10 * 9))
        let mutated = history.replaceObserved(at: r, with: value)
        let result = LinearizabilityChecker.check(history.operations)
        guard case .notLinearizable(_, let explanation) = result else {
            Issue.record("\(mutated) must fail, got \(result)")
            return
        }
        #expect(explanation.contains("It cannot be explained: \(mutated)"), "\(explanation)")
    }
}

/// A history produced by running operations against a real register (a dictionary): each
/// process issues one operation at a time, with random gaps and durations; each operation takes
/// effect at a random instant inside its interval. Writes are acknowledged (80%), failed (8%,
/// never applied) or of unknown outcome (12%: half of them applied at a random instant after
/// invocation, possibly long after the client gave up; half never). Gets are answered (95%) or
/// not. Written values are unique: `v<i>` text or 12 random-led binary bytes.
struct SimulatedHistory {
    /// Never written by any simulated history (13 bytes: no generated value has that length
    /// and spelling).
    static let neverWritten = Array("never written".utf8)

    /// The history, in random order (the checker must not depend on it).
    private(set) var operations: [RegisterOperation]

    init(seed: UInt64, processes: Int? = nil, operations count: Int? = nil, keys: Int? = nil) {
        var rng = SplitMix64(seed: seed)
        let processes = processes ?? Int.random(in: 2...32, using: &rng)
        let count = count ?? Int.random(in: 1...350, using: &rng)
        let keys = keys ?? Int.random(in: 1...3, using: &rng)

        struct Planned {
            var key: String, process: Int, kind: RegisterOperation.Kind
            var invoke: UInt64, complete: UInt64?, outcome: RegisterOperation.Outcome
            /// When it takes effect; nil: never.
            var point: UInt64?
            var observed: [UInt8]?
        }
        var clocks = (0..<processes).map { _ in UInt64.random(in: 0..<100, using: &rng) }
        var planned: [Planned] = []
        for i in 0..<count {
            // The process that is free first goes next, so operations interleave as in real time.
            let p = clocks.indices.min { clocks[$0] < clocks[$1] }!
            let invoke = clocks[p] + UInt64.random(in: 0..<30, using: &rng)
            let complete = invoke + UInt64.random(in: 1..<200, using: &rng)
            clocks[p] = complete + 1
            let key = "key\(Int.random(in: 0..<keys, using: &rng))"
            let inside = UInt64.random(in: invoke...complete, using: &rng)
            let roll = Int.random(in: 0..<100, using: &rng)
            if roll < 50 {
                let answered = Int.random(in: 0..<100, using: &rng) < 95
                planned.append(Planned(key: key, process: p, kind: .get, invoke: invoke, complete: complete,
                                       outcome: answered ? .ok : .unknown, point: inside))
                continue
            }
            let kind: RegisterOperation.Kind
            if roll < 90 {
                var value: [UInt8]
                if Bool.random(using: &rng) {
                    value = Array("v\(i)".utf8)
                } else {
                    value = (0..<8).map { _ in UInt8.random(in: 0...255, using: &rng) }
                    withUnsafeBytes(of: UInt32(i).littleEndian) { value += $0 }
                }
                kind = .put(value)
            } else {
                kind = .delete
            }
            let fate = Int.random(in: 0..<100, using: &rng)
            if fate < 80 {
                planned.append(Planned(key: key, process: p, kind: kind, invoke: invoke, complete: complete,
                                       outcome: .ok, point: inside))
            } else if fate < 88 {
                planned.append(Planned(key: key, process: p, kind: kind, invoke: invoke, complete: complete,
                                       outcome: .failed, point: nil))
            } else {
                let applied = Bool.random(using: &rng)
                let late = invoke + UInt64.random(in: 0...2000, using: &rng)
                planned.append(Planned(key: key, process: p, kind: kind, invoke: invoke,
                                       complete: Bool.random(using: &rng) ? complete : nil,
                                       outcome: .unknown, point: applied ? late : nil))
            }
        }

        // Run the register: operations take effect in order of their instants.
        let order = planned.indices.filter { planned[$0].point != nil }
            .sorted { (planned[$0].point!, $0) < (planned[$1].point!, $1) }
        var register: [String: [UInt8]] = [:]
        for i in order {
            switch planned[i].kind {
            case .put(let value): register[planned[i].key] = value
            case .delete: register[planned[i].key] = nil
            case .get: planned[i].observed = register[planned[i].key]
            }
        }
        operations = planned.map {
            RegisterOperation(key: $0.key, process: $0.process, kind: $0.kind, invoke: $0.invoke,
                              complete: $0.complete, outcome: $0.outcome,
                              observed: $0.outcome == .ok ? $0.observed : nil)
        }
        operations.shuffle(using: &rng)
    }

    /// Makes the answered get at `index` return `value` instead; returns the mutated operation.
    mutating func replaceObserved(at index: Int, with value: [UInt8]?) -> RegisterOperation {
        let op = operations[index]
        precondition(op.isAnsweredGet)
        operations[index] = RegisterOperation(key: op.key, process: op.process, kind: .get, invoke: op.invoke,
                                              complete: op.complete, outcome: .ok, observed: value)
        return operations[index]
    }

    /// A random answered get r (invoked after `after`) and a value it provably cannot return:
    /// that of an acknowledged put w that completed before an acknowledged write w2 to the same
    /// key was invoked, w2 having completed before r was invoked. Nil if no get has one.
    func overwrittenValue(using rng: inout SplitMix64, after: UInt64 = 0) -> (Int, [UInt8])? {
        let acknowledged = operations.filter { $0.kind != .get && $0.outcome == .ok }
        for r in operations.indices.shuffled(using: &rng) {
            let read = operations[r]
            guard read.isAnsweredGet, read.invoke > after else { continue }
            let before = acknowledged.filter { $0.key == read.key && $0.complete! < read.invoke }
            guard let w2 = before.max(by: { $0.invoke < $1.invoke }) else { continue }
            let overwritten = before.filter { w in
                guard case .put(let value) = w.kind else { return false }
                return w.complete! < w2.invoke && value != read.observed
            }
            guard let w = overwritten.randomElement(using: &rng), case .put(let value) = w.kind else { continue }
            return (r, value)
        }
        return nil
    }
}

extension RegisterOperation {
    /// A get that returned something (a value or not found).
    var isAnsweredGet: Bool { kind == .get && outcome == .ok }
}
