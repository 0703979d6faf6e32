extension Duration {
    /// Whole nanoseconds, clamped to Int64 (for NIO's `TimeAmount` and latency samples).
    public var nanosecondsClamped: Int64 {
        let (seconds, attoseconds) = components
        let (ns, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? (seconds < 0 ? .min : .max) : ns.addingReportingOverflow(attoseconds / 1_000_000_000).partialValue
    }

    /// In seconds, fractions included (for rates and printed durations).
    public var secondsValue: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
