/// Percentiles of a set of latencies, in nanoseconds (nearest-rank on the sorted samples).
public struct LatencySummary: Hashable, Sendable, Codable {
    /// Samples summarized.
    public var count: Int
    /// Median.
    public var p50: Int64
    /// 90th percentile.
    public var p90: Int64
    /// 99th percentile.
    public var p99: Int64
    /// 99.9th percentile.
    public var p999: Int64
    /// Largest sample.
    public var max: Int64
    /// Arithmetic mean.
    public var mean: Int64

    /// Summarizes `samples` (nanoseconds); all zero when empty.
    public init(nanoseconds samples: [Int64]) {
        let sorted = samples.sorted()
        count = sorted.count
        guard !sorted.isEmpty else {
            p50 = 0; p90 = 0; p99 = 0; p999 = 0; max = 0; mean = 0
            return
        }
        func rank(_ q: Double) -> Int64 {
            // Nearest rank: the smallest sample with at least q of the samples at or below it.
            let r = Int((q * Double(sorted.count)).rounded(.up))
            return sorted[Swift.min(sorted.count, Swift.max(1, r)) - 1]
        }
        p50 = rank(0.5)
        p90 = rank(0.9)
        p99 = rank(0.99)
        p999 = rank(0.999)
        max = sorted[sorted.count - 1]
        mean = Int64(sorted.reduce(0.0) { $0 + Double($1) } / Double(sorted.count))
    }
}
