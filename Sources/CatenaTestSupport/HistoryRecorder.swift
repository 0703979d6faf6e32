import CatenaCore
import Synchronization

/// Records the operations concurrent test clients perform, with their invocation and completion
/// times, for ``LinearizabilityChecker``.
///
/// A client calls ``invoke(process:key:kind:)`` right before it sends a request and
/// ``complete(_:outcome:observed:)`` right after the answer (or error, or timeout) arrives:
///
/// ```swift
/// let put = recorder.invoke(process: p, key: "k", kind: .put(value))
/// do {
///     _ = try await client.put("k", value)
///     recorder.complete(put, outcome: .ok)
/// } catch {
///     recorder.complete(put, outcome: .unknown)  // .failed only if the error guarantees no effect
/// }
/// let get = recorder.invoke(process: p, key: "k", kind: .get)
/// do {
///     let object = try await client.get("k")
///     recorder.complete(get, outcome: .ok, observed: object.bytes)
/// } catch let error where error.code == .notFound {
///     recorder.complete(get, outcome: .ok, observed: nil)
/// } catch {
///     recorder.complete(get, outcome: .unknown)
/// }
/// ```
///
/// Times are monotonic nanoseconds since the recorder was created (`ContinuousClock`). They are
/// read under the recorder's lock and made strictly increasing, so the recorded order of any
/// two calls is the order in which they happened: a call that returned before another began gets
/// the smaller time. Operations never completed appear in ``history`` with outcome
/// ``RegisterOperation/Outcome/unknown`` and no completion time.
///
/// All state lives behind one `Mutex`; any task or thread may call it.
public final class HistoryRecorder: Sendable {
    /// Identifies one invoked operation, to complete it.
    public struct OperationID: Hashable, Sendable {
        fileprivate let index: Int
    }

    private struct Pending: Sendable {
        var key: [UInt8]
        var process: Int
        var kind: RegisterOperation.Kind
        var invoke: UInt64
        var complete: UInt64?
        var outcome: RegisterOperation.Outcome = .unknown
        var observed: [UInt8]?
    }

    private struct State: Sendable {
        var operations: [Pending] = []
        var lastTime: UInt64 = 0
    }

    private let start = ContinuousClock.now
    private let state = Mutex(State())

    /// Creates an empty recorder; its clock starts now.
    public init() {}

    /// Records that `process` invokes `kind` on `key` now. Call it before sending the request.
    public func invoke(process: Int, key: [UInt8], kind: RegisterOperation.Kind) -> OperationID {
        state.withLock { s in
            let now = stamp(&s)
            s.operations.append(Pending(key: key, process: process, kind: kind, invoke: now))
            return OperationID(index: s.operations.count - 1)
        }
    }

    /// Records that `process` invokes `kind` on the UTF-8 bytes of `key` now.
    public func invoke(process: Int, key: String, kind: RegisterOperation.Kind) -> OperationID {
        invoke(process: process, key: Array(key.utf8), kind: kind)
    }

    /// Records that operation `id` completed now, with `outcome`; for a get answered
    /// (``RegisterOperation/Outcome/ok``), `observed` is the value it returned, nil for not found.
    /// Traps if `id` was already completed, or if `observed` is given for a put or delete.
    public func complete(_ id: OperationID, outcome: RegisterOperation.Outcome, observed: [UInt8]? = nil) {
        state.withLock { s in
            let now = stamp(&s)
            precondition(s.operations[id.index].complete == nil, "operation \(id.index) completed twice")
            precondition(observed == nil || s.operations[id.index].kind == .get, "only a get observes a value")
            s.operations[id.index].complete = now
            s.operations[id.index].outcome = outcome
            s.operations[id.index].observed = outcome == .ok ? observed : nil
        }
    }

    /// Every operation recorded so far, in order of invocation.
    public var history: [RegisterOperation] {
        state.withLock { s in
            s.operations.map {
                RegisterOperation(key: $0.key, process: $0.process, kind: $0.kind, invoke: $0.invoke,
                                  complete: $0.complete, outcome: $0.outcome, observed: $0.observed)
            }
        }
    }

    /// Now, in nanoseconds since `start`, later than every time handed out before.
    private func stamp(_ s: inout State) -> UInt64 {
        let elapsed = UInt64(max(0, (ContinuousClock.now - start).nanosecondsClamped))
        s.lastTime = max(elapsed, s.lastTime + 1)
        return s.lastTime
    }
}
