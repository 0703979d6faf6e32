import CatenaCore
import CatenaTestSupport
import Testing

/// The checker against the definition: on thousands of small random histories over three values
/// (so that both verdicts are common, and values repeat), its verdict must be that of a plain
/// exhaustive search with none of the checker's pruning or memoization.
@Suite("Linearizability checker: against an exhaustive search")
struct ReferenceCheckTests {
    @Test(arguments: 0..<4)
    func agreesWithExhaustiveSearch(group: Int) {
        var linearizable = 0, notLinearizable = 0
        for seed in UInt64(group * 5000)..<UInt64(group * 5000 + 5000) {
            var rng = SplitMix64(seed: seed)
            let history = Self.smallHistory(using: &rng)
            let initial: [UInt8]? = Bool.random(using: &rng) ? nil : bytes("a")
            let expected = Self.exhaustivelyLinearizable(history, initial: initial)
            let result = LinearizabilityChecker.check(history, initial: initial.map { [bytes("k"): $0] } ?? [:])
            switch result {
            case .linearizable: linearizable += 1
            case .notLinearizable: notLinearizable += 1
            case .gaveUp: break
            }
            #expect((result == .linearizable) == expected && result != .gaveUp(key: "k"),
                    "seed \(seed): expected \(expected ? "linearizable" : "not"), got \(result); initial \(String(describing: initial)); history \(history)")
        }
        // Both verdicts were exercised, many times.
        #expect(linearizable > 300 && notLinearizable > 300, "\(linearizable) linearizable, \(notLinearizable) not")
    }

    /// Up to 13 operations on key "k": puts of "a", "b" or "c", deletes, gets returning one of
    /// those or absent; acknowledged, failed or of unknown outcome; random overlapping intervals.
    static func smallHistory(using rng: inout SplitMix64) -> [RegisterOperation] {
        let values: [[UInt8]?] = [bytes("a"), bytes("b"), bytes("c"), nil]
        return (0..<Int.random(in: 1...13, using: &rng)).map { i in
            let invoke = UInt64.random(in: 0..<20, using: &rng)
            let complete = invoke + UInt64.random(in: 0..<10, using: &rng)
            let roll = Int.random(in: 0..<10, using: &rng)
            let fate = Int.random(in: 0..<10, using: &rng)
            let outcome: RegisterOperation.Outcome = fate < 7 ? .ok : fate < 9 ? .unknown : .failed
            let end: UInt64? = outcome == .unknown && Bool.random(using: &rng) ? nil : complete
            if roll < 5 {
                return RegisterOperation(key: "k", process: i, kind: .get, invoke: invoke, complete: end, outcome: outcome,
                                         observed: outcome == .ok ? values.randomElement(using: &rng)! : nil)
            }
            let kind: RegisterOperation.Kind = roll < 9 ? .put(values[Int.random(in: 0...2, using: &rng)]!) : .delete
            return RegisterOperation(key: "k", process: i, kind: kind, invoke: invoke, complete: end, outcome: outcome)
        }
    }

    /// Linearizability straight from its definition: try every order of the operations that
    /// respects real time, with every subset of the writes of unknown outcome. Remembers only
    /// (placed operations, value) pairs that failed, to keep it fast.
    static func exhaustivelyLinearizable(_ history: [RegisterOperation], initial: [UInt8]?) -> Bool {
        let ops = history.filter { $0.outcome != .failed && ($0.kind != .get || $0.outcome == .ok) }
        func required(_ op: RegisterOperation) -> Bool { op.outcome == .ok }
        struct Failed: Hashable { var done: [Bool]; var value: [UInt8]? }
        var failed = Set<Failed>()
        func search(_ done: [Bool], _ value: [UInt8]?) -> Bool {
            if ops.indices.allSatisfy({ done[$0] || !required(ops[$0]) }) { return true }
            if failed.contains(Failed(done: done, value: value)) { return false }
            for x in ops.indices where !done[x] {
                // Every required operation that completed before x was invoked must already be placed.
                let blocked = ops.indices.contains { y in
                    y != x && !done[y] && required(ops[y]) && ops[y].complete! < ops[x].invoke
                }
                if blocked { continue }
                var next = done
                next[x] = true
                switch ops[x].kind {
                case .get: if ops[x].observed == value && search(next, value) { return true }
                case .put(let v): if search(next, v) { return true }
                case .delete: if search(next, nil) { return true }
                }
            }
            failed.insert(Failed(done: done, value: value))
            return false
        }
        return search(Array(repeating: false, count: ops.count), initial)
    }
}
