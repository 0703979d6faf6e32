#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Counts batches written but not yet synced, and lets the writer thread block until none are.
///
/// A mutex and condition variable (heap-allocated, so their addresses are stable); every access
/// to `count` holds the mutex, hence `@unchecked Sendable`. Only store threads block on it,
/// never Swift's cooperative pool.
final class InFlightCounter: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var count = 0

    init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Adds `delta` (negative to release); wakes waiters when the count reaches zero.
    func add(_ delta: Int) {
        pthread_mutex_lock(mutex)
        count = max(0, count + delta)
        if count == 0 { pthread_cond_broadcast(condition) }
        pthread_mutex_unlock(mutex)
    }

    /// Blocks until the count is zero.
    func waitForZero() {
        pthread_mutex_lock(mutex)
        while count > 0 { pthread_cond_wait(condition, mutex) }
        pthread_mutex_unlock(mutex)
    }
}
