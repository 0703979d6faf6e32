import CatenaCore
import Synchronization

/// A ``NodeClock`` that stands still until the test moves it: a node given one counts its lease
/// on it, so a test runs the lease out with ``advance(by:)`` instead of sleeping through it, and
/// nothing expires while the test is slow.
///
/// It only goes forward. Its reading lives in a `Mutex`; any task or thread may read or advance it.
public final class ManualNodeClock: NodeClock {
    private let now: Mutex<UInt64>

    /// A clock reading `nanoseconds`.
    public init(nanoseconds: UInt64 = 0) {
        now = Mutex(nanoseconds)
    }

    /// The current reading.
    public var nanoseconds: UInt64 { now.withLock { $0 } }

    /// Moves the clock forward by `duration` (a negative one is refused: the clock is monotonic).
    public func advance(by duration: Duration) {
        precondition(duration >= .zero, "a ManualNodeClock only goes forward, not by \(duration)")
        let (seconds, attoseconds) = duration.components
        advance(nanoseconds: UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000))
    }

    /// Moves the clock forward by `nanoseconds`.
    public func advance(nanoseconds delta: UInt64) {
        now.withLock { $0 += delta }
    }
}
