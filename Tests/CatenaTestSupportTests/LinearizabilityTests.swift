import CatenaTestSupport
import Testing

/// Hand-written histories whose verdict is known: each good one has a linearization (named in a
/// comment), each bad one provably has none (the comment says why).
@Suite("Linearizability checker: known histories")
struct LinearizabilityTests {
    // MARK: - Linearizable

    @Test func sequentialHistory() {
        let history = [
            put(1, "a", 0, 10), get(2, "a", 20, 30),
            put(1, "b", 40, 50), get(2, "b", 60, 70),
            delete(1, 80, 90), get(2, nil, 100, 110),
        ]
        #expect(LinearizabilityChecker.check(history) == .linearizable)
    }

    @Test func emptyHistoryAndReadOfAbsentKey() {
        #expect(LinearizabilityChecker.check([]) == .linearizable)
        #expect(LinearizabilityChecker.check([get(1, nil, 0, 10)]) == .linearizable)
    }

    /// Two overlapping puts: a read after both may see either, whichever was linearized last.
    @Test(arguments: ["a", "b"])
    func overlappingPutsThenReadOfEither(_ seen: String) {
        let history = [put(1, "a", 0, 100), put(2, "b", 10, 90), get(3, seen, 110, 120), get(4, seen, 130, 140)]
        #expect(LinearizabilityChecker.check(history) == .linearizable)
    }

    /// Reads concurrent with a put may see the old or the new value, until one sees the new one.
    @Test func readsConcurrentWithAPutSeeOldThenNew() {
        let history = [
            put(1, "a", 0, 10),
            put(2, "b", 20, 200),
            get(3, "a", 30, 40), get(4, "b", 50, 60), get(3, "b", 70, 80),
            get(5, "a", 25, 75),  // overlaps the "b" read at 50…60: linearized before it
        ]
        #expect(LinearizabilityChecker.check(history) == .linearizable)
    }

    /// A put that timed out was applied: reads see it, even after the client gave up on it.
    @Test func unknownWriteThatWasApplied() {
        let history = [
            put(1, "a", 0, 10),
            put(2, "b", 20, 30, .unknown),
            get(3, "a", 40, 50),  // not applied yet when the client gave up at 30…
            get(3, "b", 60, 70),  // …but later: unknown writes have no completion bound
            get(4, "b", 1000, 1010),
        ]
        #expect(LinearizabilityChecker.check(history) == .linearizable)
    }

    /// A put that timed out was never applied.
    @Test func unknownWriteNeverApplied() {
        let history = [
            put(1, "a", 0, 10),
            put(2, "b", 20, nil, .unknown),
            get(3, "a", 40, 50), get(4, "a", 1000, 1010),
        ]
        #expect(LinearizabilityChecker.check(history) == .linearizable)
    }

    @Test func deleteThenReadAbsent() {
        let history = [put(1, "a", 0, 10), get(2, "a", 15, 18), delete(2, 20, 30), get(3, nil, 40, 50)]
        #expect(LinearizabilityChecker.check(history) == .linearizable)
    }

    /// A failed put never took effect, so reading the older value after it is fine.
    @Test func failedWriteIsIgnored() {
        let history = [put(1, "a", 0, 10), put(2, "b", 20, 30, .failed), get(3, "a", 40, 50)]
        #expect(LinearizabilityChecker.check(history) == .linearizable)
    }

    /// Gets without an answer observed nothing and constrain nothing.
    @Test func unansweredGetsAreIgnored() {
        let history = [
            put(1, "a", 0, 10),
            RegisterOperation(key: "k", process: 2, kind: .get, invoke: 20, complete: 30, outcome: .unknown),
            RegisterOperation(key: "k", process: 3, kind: .get, invoke: 20, complete: 30, outcome: .failed),
            get(4, "a", 40, 50),
        ]
        #expect(LinearizabilityChecker.check(history) == .linearizable)
    }

    @Test func initialValue() {
        let history = [get(1, "seed", 0, 10), put(2, "a", 20, 30), get(1, "a", 40, 50)]
        #expect(LinearizabilityChecker.check(history, initial: [bytes("k"): bytes("seed")]) == .linearizable)
        guard case .notLinearizable = LinearizabilityChecker.check(history) else {
            Issue.record("without the initial value, the first read sees something never written")
            return
        }
    }

    /// An operation that completes at the very time another is invoked counts as concurrent.
    @Test func equalTimesAreConcurrent() {
        let history = [put(1, "a", 0, 10), put(2, "b", 20, 30), get(3, "a", 30, 40)]
        #expect(LinearizabilityChecker.check(history) == .linearizable)
    }

    // MARK: - Not linearizable

    /// The acknowledged put of "b" disappears: every later read returns the older "a".
    @Test func lostWrite() throws {
        let history = [
            put(1, "a", 0, 10), put(2, "b", 20, 30),
            get(3, "a", 40, 50), get(4, "a", 60, 70), get(3, "a", 80, 90),
        ]
        let explanation = try notLinearizable(history)
        #expect(explanation.contains("get by process 3 [t=40…50] returned \"a\""), "\(explanation)")
        #expect(explanation.contains("could have returned: \"b\""), "\(explanation)")
        #expect(explanation.contains("up to the response before (t=30) it is"), "\(explanation)")
        #expect(explanation.contains("Last write acknowledged before it was invoked: put(\"b\") by process 2 [t=20…30]"), "\(explanation)")
    }

    /// A read that starts after "b" was acknowledged returns the previous value "a", even though
    /// later reads see "b".
    @Test func staleRead() throws {
        let history = [
            put(1, "a", 0, 10), put(1, "b", 20, 30),
            get(2, "b", 25, 35),  // concurrent with the put: fine
            get(3, "a", 40, 50),  // started after the put completed: stale
            get(2, "b", 60, 70),
        ]
        let explanation = try notLinearizable(history)
        #expect(explanation.contains("get by process 3 [t=40…50] returned \"a\""), "\(explanation)")
    }

    /// A deleted key comes back.
    @Test func readAfterAcknowledgedDeleteSeesOldValue() throws {
        let history = [put(1, "a", 0, 10), delete(1, 20, 30), get(2, "a", 40, 50)]
        let explanation = try notLinearizable(history)
        #expect(explanation.contains("could have returned: absent"), "\(explanation)")
    }

    /// Two sequential reads by different clients, while "b" is being written: the first sees
    /// "b", the second — invoked after the first returned — sees the older "a" again.
    @Test func readGoesBackInTime() throws {
        let history = [
            put(1, "a", 0, 10), put(2, "b", 20, 100),
            get(3, "b", 30, 40), get(4, "a", 50, 60),
        ]
        let explanation = try notLinearizable(history)
        #expect(explanation.contains("get by process 4 [t=50…60] returned \"a\""), "\(explanation)")
        #expect(explanation.contains("could have returned: \"b\""), "\(explanation)")
    }

    /// After two overlapping puts, sequential reads cannot see first one value and then the other.
    @Test func readsAfterOverlappingPutsDisagree() throws {
        let history = [put(1, "a", 0, 100), put(2, "b", 10, 90), get(3, "a", 110, 120), get(4, "b", 130, 140)]
        _ = try notLinearizable(history)
    }

    @Test func readOfValueNeverWritten() throws {
        let history = [put(1, "a", 0, 10), get(2, "zzz", 20, 30)]
        let explanation = try notLinearizable(history)
        #expect(explanation.contains("get by process 2 [t=20…30] returned \"zzz\": no put of that value had been invoked by the time it returned (the key starts absent)"), "\(explanation)")
    }

    /// A value read before anyone invoked its put.
    @Test func readOfValueWrittenOnlyLater() throws {
        let history = [get(2, "a", 0, 10), put(1, "a", 20, 30)]
        _ = try notLinearizable(history)
    }

    /// A put that failed (definitely not applied) is read anyway.
    @Test func readOfFailedWrite() throws {
        let history = [put(1, "a", 0, 10), put(2, "b", 20, 30, .failed), get(3, "b", 40, 50)]
        _ = try notLinearizable(history)
    }

    /// A put of unknown outcome is read, and then a later read no longer sees it although no
    /// other write came in between: an unknown write takes effect at most once.
    @Test func readOfUnknownWriteThenReverting() throws {
        let history = [
            put(1, "a", 0, 10), put(2, "b", 20, nil, .unknown),
            get(3, "b", 30, 40), get(4, "a", 50, 60),
        ]
        let explanation = try notLinearizable(history)
        #expect(explanation.contains("get by process 4 [t=50…60] returned \"a\""), "\(explanation)")
    }

    /// Each write of unknown outcome takes effect at most once: two of them cannot explain
    /// sequential reads of "a", then "b", then "a" again.
    @Test func twoConcurrentUnknownWritesCannotExplainThreeSwitches() throws {
        let history = [
            put(1, "a", 0, 10, .unknown), put(2, "b", 0, 10, .unknown),
            get(3, "a", 20, 30), get(3, "b", 40, 50), get(3, "a", 60, 70),
        ]
        _ = try notLinearizable(history)
    }

    // MARK: - Keys, bounds

    /// Keys are independent: each is checked on its own, and the bad one is named.
    @Test func keysAreCheckedIndependently() throws {
        let history = [
            put(1, "a", 0, 10, key: "x"), put(1, "b", 20, 30, key: "y"),
            get(2, "a", 40, 50, key: "x"), get(2, "b", 40, 50, key: "y"),
            put(1, "c", 60, 70, key: "y"), get(2, "b", 80, 90, key: "y"),  // stale on y only
        ]
        let result = LinearizabilityChecker.check(history)
        guard case .notLinearizable(let key, _) = result else {
            Issue.record("expected y to fail, got \(result)")
            return
        }
        #expect(key == "y")
        // A read of x's value under y would be wrong: values do not cross keys.
        #expect(LinearizabilityChecker.check([put(1, "a", 0, 10, key: "x"), get(2, "a", 20, 30, key: "y")])
            != .linearizable)
    }

    /// Keys are bytes: the NFC and NFD spellings of "café" are two registers.
    @Test func keysAreComparedByteWise() {
        let nfc = "caf\u{E9}", nfd = "cafe\u{301}"
        let history = [put(1, "a", 0, 10, key: nfc), get(2, nil, 20, 30, key: nfd)]
        #expect(LinearizabilityChecker.check(history) == .linearizable)
    }

    /// The search stops at `maxStates` and says it gave up, rather than guessing.
    @Test func boundedSearchGivesUp() {
        let history = [put(1, "a", 0, 100), put(2, "b", 10, 90), get(3, "a", 110, 120), get(4, "b", 130, 140)]
        #expect(LinearizabilityChecker.check(history, maxStates: 1) == .gaveUp(key: "k"))
        #expect(LinearizabilityChecker.check(history, maxStates: 100) != .gaveUp(key: "k"))
    }

    /// Values that are not text are shown in hex.
    @Test func binaryValuesAreShownInHex() throws {
        let history = [
            RegisterOperation(key: "k", process: 1, kind: .put([0, 1, 0xFF]), invoke: 0, complete: 10, outcome: .ok),
            RegisterOperation(key: "k", process: 2, kind: .get, invoke: 20, complete: 30, outcome: .ok, observed: [0, 1, 0xFE]),
        ]
        let explanation = try notLinearizable(history)
        #expect(explanation.contains("returned 0x0001fe (3 bytes)"), "\(explanation)")
    }
}

// MARK: - Helpers

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

func put(_ process: Int, _ value: String, _ invoke: UInt64, _ complete: UInt64?,
         _ outcome: RegisterOperation.Outcome = .ok, key: String = "k") -> RegisterOperation {
    RegisterOperation(key: key, process: process, kind: .put(bytes(value)), invoke: invoke, complete: complete, outcome: outcome)
}

func delete(_ process: Int, _ invoke: UInt64, _ complete: UInt64?,
            _ outcome: RegisterOperation.Outcome = .ok, key: String = "k") -> RegisterOperation {
    RegisterOperation(key: key, process: process, kind: .delete, invoke: invoke, complete: complete, outcome: outcome)
}

/// An answered get that returned `observed` (nil: not found).
func get(_ process: Int, _ observed: String?, _ invoke: UInt64, _ complete: UInt64, key: String = "k") -> RegisterOperation {
    RegisterOperation(key: key, process: process, kind: .get, invoke: invoke, complete: complete, outcome: .ok,
                      observed: observed.map(bytes))
}

struct UnexpectedVerdict: Error, CustomStringConvertible {
    var result: LinearizabilityResult
    var description: String { "expected notLinearizable, got \(result)" }
}

/// The explanation of a history that must not be linearizable; throws otherwise.
func notLinearizable(_ history: [RegisterOperation], sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
    let result = LinearizabilityChecker.check(history)
    guard case .notLinearizable(_, let explanation) = result else {
        Issue.record(UnexpectedVerdict(result: result), sourceLocation: sourceLocation)
        throw UnexpectedVerdict(result: result)
    }
    return explanation
}
