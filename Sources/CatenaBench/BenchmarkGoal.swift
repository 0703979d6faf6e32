import Foundation

/// A goal a lab benchmark states (`catena bench-storage`, `bench-chain`, `bench-failover`,
/// `bench-join`, `bench-catchup`) and whether a run met it: what each benchmark's JSON lists
/// under `goals`, and what decides the command's exit status (6 when a goal was missed).
///
/// A goal the run did not measure (a value size or codec it did not run) has `met` nil: it is
/// neither met nor missed.
public struct BenchmarkGoal: Codable, Hashable, Sendable {
    /// How the measured figure is compared with the threshold.
    public enum Comparison: String, Codable, Hashable, Sendable {
        /// The figure must be at least the threshold.
        case atLeast = ">="
        /// The figure must be below the threshold.
        case below = "<"

        /// Whether `value` passes against `threshold` (false for NaN).
        public func holds(_ value: Double, _ threshold: Double) -> Bool {
            switch self {
            case .atLeast: value >= threshold
            case .below: value < threshold
            }
        }
    }

    /// The goal in words, with what it applies to: `4 KiB: replication efficiency >= 0.6`.
    public var goal: String
    /// What the run measured, in words (`median 1.11 over 3 rounds`), or why it did not.
    public var measured: String
    /// How ``value`` is compared with ``threshold``.
    public var comparison: Comparison
    /// The threshold, in ``unit``.
    public var threshold: Double
    /// The unit of ``threshold`` and ``value``: `MB/s`, `ms`, `puts/s`, `ratio`.
    public var unit: String
    /// The figure judged; nil when not measured or not a finite number.
    public var value: Double?
    /// Whether the goal was met; nil when the run did not measure it.
    public var met: Bool?

    /// A goal judged on `value`: met when `value comparison threshold` holds, not measured when
    /// `value` is nil.
    public init(goal: String, measured: String, comparison: Comparison, threshold: Double, unit: String, value: Double?) {
        self.init(goal: goal, measured: measured, comparison: comparison, threshold: threshold, unit: unit, value: value,
                  met: value.map { comparison.holds($0, threshold) })
    }

    /// A goal whose verdict takes more than one figure (a copy that never finished misses its
    /// rate goal whatever the rate).
    public init(goal: String, measured: String, comparison: Comparison, threshold: Double, unit: String, value: Double?, met: Bool?) {
        self.goal = goal
        self.measured = measured
        self.comparison = comparison
        self.threshold = threshold
        self.unit = unit
        self.value = value.flatMap { $0.isFinite ? $0 : nil }
        self.met = met
    }

    /// The goals among `goals` that were measured and missed.
    public static func missed(_ goals: [BenchmarkGoal]) -> [BenchmarkGoal] {
        goals.filter { $0.met == false }
    }

    enum CodingKeys: String, CodingKey {
        case goal, measured, comparison, threshold, unit, value, met
    }

    /// Writes every key, `value` and `met` as null when absent, so a script sees the same keys
    /// for a goal that was not measured.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(goal, forKey: .goal)
        try c.encode(measured, forKey: .measured)
        try c.encode(comparison, forKey: .comparison)
        try c.encode(threshold, forKey: .threshold)
        try c.encode(unit, forKey: .unit)
        try c.encode(value, forKey: .value)
        try c.encode(met, forKey: .met)
    }
}

/// The JSON of a lab benchmark's report (`--json`): keys as the properties are named
/// (camelCase, as `bench-storage` and `bench-chain` have always written), sorted, indented.
/// A figure that is not a finite number (a ratio over an empty baseline) is written as the
/// string "NaN", "Infinity" or "-Infinity" rather than failing the report.
public func labBenchmarkJSON(_ report: some Encodable) throws -> Data {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "Infinity", negativeInfinity: "-Infinity", nan: "NaN")
    return try encoder.encode(report)
}

/// `x`, or nil when it is not a finite number (for figures that may divide by zero).
func finite(_ x: Double) -> Double? { x.isFinite ? x : nil }
