import CatenaCore
import Synchronization

/// The handle of an enqueued append: await ``durable()`` to learn when (and whether) the
/// records became durable and visible.
///
/// Splitting enqueue from waiting lets a caller that assigns LSNs (the head) enqueue in LSN
/// order synchronously and wait for many appends at once.
public final class AppendTicket: Sendable {
    private enum State {
        case pending([CheckedContinuation<Void, any Error>], [@Sendable () -> Void])
        case done(Result<Void, CatenaError>)
    }

    private let state = Mutex<State>(.pending([], []))

    init() {}

    /// Returns once the records are durable by the store's policy; throws if they never will be.
    public func durable() async throws(CatenaError) {
        do {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let ready: Result<Void, CatenaError>? = state.withLock { s in
                    switch s {
                    case .pending(var waiters, let callbacks):
                        waiters.append(continuation)
                        s = .pending(waiters, callbacks)
                        return nil
                    case .done(let result):
                        return result
                    }
                }
                if let ready { continuation.resume(with: ready.mapError { $0 as any Error }) }
            }
        } catch let error as CatenaError {
            throw error
        } catch {
            throw CatenaError(.ioFailure, "\(error)")
        }
    }

    /// Whether the ticket has completed, and how.
    public var result: Result<Void, CatenaError>? {
        state.withLock { s in
            if case .done(let r) = s { return r }
            return nil
        }
    }

    /// Calls `callback` once the ticket completes (read ``result`` then), on the thread that
    /// completes it — the store's writer or syncer thread, so it must only hand the news on.
    /// Returns false, keeping nothing, if the ticket has completed already. Callbacks run before
    /// ``durable()`` returns to anyone.
    public func onCompletion(_ callback: @escaping @Sendable () -> Void) -> Bool {
        state.withLock { s in
            guard case .pending(let waiters, var callbacks) = s else { return false }
            callbacks.append(callback)
            s = .pending(waiters, callbacks)
            return true
        }
    }

    func complete(_ result: Result<Void, CatenaError>) {
        let (waiters, callbacks): ([CheckedContinuation<Void, any Error>], [@Sendable () -> Void]) = state.withLock { s in
            guard case .pending(let waiters, let callbacks) = s else { return ([], []) }
            s = .done(result)
            return (waiters, callbacks)
        }
        for c in callbacks { c() }
        for w in waiters { w.resume(with: result.mapError { $0 as any Error }) }
    }
}
