import CatenaCore
import CatenaTestSupport
import Synchronization
import Testing

@Suite("History recorder")
struct HistoryRecorderTests {
    /// Times are strictly increasing in call order, so sequential operations are ordered.
    @Test func sequentialCallsGetIncreasingTimes() throws {
        let recorder = HistoryRecorder()
        let a = recorder.invoke(process: 1, key: "k", kind: .put(bytes("a")))
        recorder.complete(a, outcome: .ok)
        let b = recorder.invoke(process: 2, key: "k", kind: .get)
        recorder.complete(b, outcome: .ok, observed: bytes("a"))
        let history = recorder.history
        try #require(history.count == 2)
        let (put, get) = (history[0], history[1])
        #expect(put.kind == .put(bytes("a")) && put.process == 1 && put.outcome == .ok && put.key == bytes("k"))
        #expect(get.kind == .get && get.process == 2 && get.observed == bytes("a"))
        #expect(put.invoke < put.complete! && put.complete! < get.invoke && get.invoke < get.complete!)
    }

    /// An operation invoked and never completed is one of unknown outcome, without a completion.
    @Test func uncompletedOperationsHaveUnknownOutcome() throws {
        let recorder = HistoryRecorder()
        _ = recorder.invoke(process: 1, key: "k", kind: .put(bytes("lost in flight")))
        let get = recorder.invoke(process: 2, key: "k", kind: .get)
        recorder.complete(get, outcome: .ok, observed: bytes("lost in flight"))
        let history = recorder.history
        try #require(history.count == 2)
        #expect(history[0].outcome == .unknown && history[0].complete == nil)
        // It may still have taken effect: the read of it is fine.
        #expect(LinearizabilityChecker.check(history) == .linearizable)
    }

    /// Sixteen tasks hammer a register behind a lock (linearizable by construction), recording
    /// with one recorder: every operation is recorded once, completed, and the history checks.
    @Test func concurrentClientsOfALockedRegisterAreLinearizable() async throws {
        let recorder = HistoryRecorder()
        let store = LockedStore()
        await withTaskGroup(of: Void.self) { group in
            for process in 0..<16 {
                group.addTask {
                    var rng = SplitMix64(seed: UInt64(process))
                    for i in 0..<60 {
                        let key = Bool.random(using: &rng) ? "x" : "y"
                        let roll = Int.random(in: 0..<10, using: &rng)
                        let kind: RegisterOperation.Kind = roll < 5 ? .get : roll < 9 ? .put(bytes("p\(process)-\(i)")) : .delete
                        let id = recorder.invoke(process: process, key: key, kind: kind)
                        await Task.yield()
                        let observed = store.perform(kind, on: key)
                        await Task.yield()
                        recorder.complete(id, outcome: .ok, observed: observed)
                    }
                }
            }
        }
        let history = recorder.history
        #expect(history.count == 16 * 60)
        #expect(history.allSatisfy { $0.outcome == .ok && $0.complete != nil })
        #expect(Set(history.map(\.invoke)).count == history.count, "invocation times are unique")
        #expect(LinearizabilityChecker.check(history) == .linearizable)
    }

    /// A store whose reads lag one write behind, used by clients one after another: the
    /// recorded history shows the stale read.
    @Test func aStoreWithStaleReadsIsCaught() async throws {
        let recorder = HistoryRecorder()
        let store = LaggingStore()
        for value in ["a", "b"] {
            let id = recorder.invoke(process: 1, key: "k", kind: .put(bytes(value)))
            await store.put(bytes(value))
            recorder.complete(id, outcome: .ok)
        }
        let id = recorder.invoke(process: 2, key: "k", kind: .get)
        let observed = await store.get()
        recorder.complete(id, outcome: .ok, observed: observed)
        #expect(observed == bytes("a"))
        let result = LinearizabilityChecker.check(recorder.history)
        guard case .notLinearizable("k", let explanation) = result else {
            Issue.record("expected the stale read to be caught, got \(result)")
            return
        }
        #expect(explanation.contains("could have returned: \"b\""), "\(explanation)")
    }
}

/// A register per key behind one lock: every operation takes effect inside its call.
private final class LockedStore: Sendable {
    private let values = Mutex<[String: [UInt8]]>([:])

    /// Performs `kind`; returns what a get observed.
    func perform(_ kind: RegisterOperation.Kind, on key: String) -> [UInt8]? {
        values.withLock { values in
            switch kind {
            case .put(let value): values[key] = value
            case .delete: values[key] = nil
            case .get: return values[key]
            }
            return nil
        }
    }
}

/// One register whose reads return the value before the latest write.
private actor LaggingStore {
    private var current: [UInt8]?
    private var previous: [UInt8]?

    func put(_ value: [UInt8]) {
        previous = current
        current = value
    }

    func get() -> [UInt8]? { previous }
}
