/// A monotonic clock in nanoseconds, injected wherever time decides something (a node's lease):
/// the pure state machines take its readings as values, and tests substitute a clock they
/// advance by hand, so lease expiry is tested without sleeping through it.
public protocol NodeClock: Sendable {
    /// Nanoseconds since an arbitrary fixed origin; never goes back.
    var nanoseconds: UInt64 { get }
}

/// The process's monotonic clock (`ContinuousClock`), counted from when the value was made.
public struct SystemNodeClock: NodeClock {
    private let origin = ContinuousClock.now

    /// A clock starting at (about) zero now.
    public init() {}

    public var nanoseconds: UInt64 { UInt64(max(0, (ContinuousClock.now - origin).nanosecondsClamped)) }
}
