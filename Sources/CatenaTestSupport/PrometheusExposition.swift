/// A strict parser of the Prometheus text exposition format (version 0.0.4), so that tests check
/// what a `/metrics` endpoint answers with a parser, not with grep.
///
/// It enforces the format as documented (prometheus.io, "Exposition formats") and the checks that
/// Prometheus' own text parser (`expfmt.TextParser` of prometheus/common) makes, and is stricter
/// where the documentation states a rule that parser leaves to others:
///
/// - Every line ends with `\n` (the last one too); no `\r`. Empty lines are ignored; tokens are
///   separated by blanks or tabs.
/// - `# HELP name text` (escapes `\\` and `\n` only) and `# TYPE name type` (`counter`, `gauge`,
///   `histogram`, `summary`, `untyped`), each at most once per family, `TYPE` before the family's
///   first sample. Other lines starting with `#` are comments.
/// - Metric names match `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names `[a-zA-Z_][a-zA-Z0-9_]*` and do not
///   start with `__` (reserved); label values are quoted, with the escapes `\\`, `\"` and `\n` only;
///   no label name twice in one sample. A trailing comma in the label set is allowed.
/// - Values are floats as Go's `strconv.ParseFloat` reads them, without hexadecimal or `_`, as
///   Prometheus reads them: `1`, `-2.5e-3`, `+Inf`, `-Inf`, `NaN` (the words in any case, so also
///   `inf` and `nan`, which Swift's `Double.description` writes); an optional integer timestamp.
/// - The lines of one family are contiguous; no series (sample name and label set) appears twice.
/// - Counters are neither negative nor NaN.
/// - A histogram `x` has only samples `x_bucket` (with an `le` label), `x_sum` and `x_count` (without);
///   per series (its labels less `le`) the buckets come in increasing `le` order with
///   non-decreasing counts, a `le="+Inf"` bucket equal to `x_count`, and an `x_sum` and `x_count`.
///   Counts are non-negative integers.
/// - A summary `x` has samples `x` (with a `quantile` label in [0, 1], increasing per series),
///   `x_sum` and `x_count` (without), each series with an `x_sum` and an `x_count`.
///
/// Samples named `x_bucket`, `x_sum` or `x_count` belong to family `x` when `x` was declared a
/// histogram by a `TYPE` line before them (`x_sum`, `x_count` likewise for a summary), as in
/// Prometheus' parser; otherwise each sample name is its own family, `untyped` unless declared.
///
/// Naming conventions (`_total` on counters, base units, a prefix) are not part of the format: see
/// ``conventionProblems(prefix:)``.
public struct PrometheusExposition: Sendable {
    /// A family's type, as its `# TYPE` line declares it (`untyped` when there is none).
    public enum MetricType: String, Sendable, CaseIterable {
        case counter, gauge, histogram, summary, untyped
    }

    /// One sample line: the sample's own name (`x_bucket`, not `x`, for a histogram's bucket), its
    /// labels (`le` and `quantile` included), its value and its timestamp in milliseconds if any.
    public struct Sample: Hashable, Sendable {
        /// The name on the line (`x_bucket`, `x_sum`, `x_count` within histogram `x`).
        public var name: String
        /// The labels, unescaped.
        public var labels: [String: String]
        /// The value (`+Inf`, `-Inf` and NaN included).
        public var value: Double
        /// The timestamp, in milliseconds since the epoch, if the line has one.
        public var timestamp: Int64?

        /// A sample, as a test expects one.
        public init(name: String, labels: [String: String] = [:], value: Double, timestamp: Int64? = nil) {
            self.name = name
            self.labels = labels
            self.value = value
            self.timestamp = timestamp
        }
    }

    /// A metric family: its name, type, unescaped help text and samples in the order of the text.
    /// A family named by `HELP` or `TYPE` lines alone has no samples.
    public struct Family: Sendable {
        /// The family's name (`x` for histogram `x`).
        public var name: String
        /// The type its `TYPE` line declares, or `untyped`.
        public var type: MetricType
        /// The `HELP` text, unescaped; nil without a `HELP` line.
        public var help: String?
        /// The family's samples in the order of the text.
        public var samples: [Sample]
    }

    /// One series of a histogram: its buckets in increasing upper bound (the last one `+Inf`), sum
    /// and count.
    public struct Histogram: Hashable, Sendable {
        /// A bucket: the observations at or below `upperBound`, counted cumulatively.
        public struct Bucket: Hashable, Sendable {
            /// The `le` label's value.
            public var upperBound: Double
            /// The observations at or below `upperBound`.
            public var cumulativeCount: Double
        }
        /// The buckets, in increasing `upperBound`.
        public var buckets: [Bucket]
        /// The `_sum` sample's value.
        public var sum: Double
        /// The `_count` sample's value.
        public var count: Double
    }

    /// Why a text is not valid exposition: the rule broken, the line (1-based) and its text.
    public struct ParseError: Error, Hashable, Sendable, CustomStringConvertible {
        /// The rule broken, as a stable, matchable value.
        public struct Code: Hashable, Sendable, CustomStringConvertible {
            private let name: String
            private init(_ name: String) { self.name = name }
            /// The code's name.
            public var description: String { name }

            /// A line does not end with `\n` (the last one), or contains `\r`.
            public static let lineEnding = Code("lineEnding")
            /// The bytes are not UTF-8 (``PrometheusExposition/init(parsingUTF8:)`` only).
            public static let invalidUTF8 = Code("invalidUTF8")
            /// A line is not of the shape of a sample or a `HELP`/`TYPE` line: a missing `=`, quote,
            /// value or type, an unterminated label set, text after the timestamp.
            public static let syntax = Code("syntax")
            /// An escape other than `\\`, `\n` (and `\"` in label values), or a lone `\` at the end.
            public static let invalidEscape = Code("invalidEscape")
            /// A metric name not matching `[a-zA-Z_:][a-zA-Z0-9_:]*`, or missing.
            public static let invalidMetricName = Code("invalidMetricName")
            /// A label name not matching `[a-zA-Z_][a-zA-Z0-9_]*`.
            public static let invalidLabelName = Code("invalidLabelName")
            /// A label name starting with `__`, which Prometheus reserves.
            public static let reservedLabelName = Code("reservedLabelName")
            /// The same label name twice in one sample.
            public static let duplicateLabelName = Code("duplicateLabelName")
            /// A value that is not a float.
            public static let invalidValue = Code("invalidValue")
            /// A timestamp that is not a 64-bit integer.
            public static let invalidTimestamp = Code("invalidTimestamp")
            /// A `TYPE` line naming no known type.
            public static let unknownType = Code("unknownType")
            /// A second `HELP` line for a family.
            public static let duplicateHelp = Code("duplicateHelp")
            /// A second `TYPE` line for a family.
            public static let duplicateType = Code("duplicateType")
            /// A `TYPE` line after samples of its family.
            public static let typeAfterSamples = Code("typeAfterSamples")
            /// A line of a family after another family's lines followed its own.
            public static let splitFamily = Code("splitFamily")
            /// The same sample name and label set twice.
            public static let duplicateSeries = Code("duplicateSeries")
            /// A counter's value is negative or NaN.
            public static let negativeCounter = Code("negativeCounter")
            /// A histogram's or summary's sample has a name or labels its type does not allow: `x`
            /// itself in a histogram, a bucket without `le`, `le` or `quantile` on `_sum`/`_count`,
            /// a summary's quantile sample without `quantile`.
            public static let misplacedSample = Code("misplacedSample")
            /// An `le` label that is not a float, or a `quantile` label outside [0, 1].
            public static let invalidBound = Code("invalidBound")
            /// A series' buckets (or quantiles) not in increasing order of their bound.
            public static let boundsOutOfOrder = Code("boundsOutOfOrder")
            /// A bucket counting fewer observations than the one before it.
            public static let bucketsNotCumulative = Code("bucketsNotCumulative")
            /// A bucket's or `_count`'s value that is not a non-negative integer.
            public static let invalidCount = Code("invalidCount")
            /// A histogram series without a `le="+Inf"` bucket.
            public static let missingInfBucket = Code("missingInfBucket")
            /// A histogram series whose `+Inf` bucket differs from its `_count`.
            public static let infBucketMismatch = Code("infBucketMismatch")
            /// A histogram or summary series without `_sum` or without `_count`.
            public static let missingSumOrCount = Code("missingSumOrCount")
        }

        /// The rule broken.
        public var code: Code
        /// The line, counted from 1.
        public var line: Int
        /// The line's text, without its `\n`.
        public var text: String
        /// What is wrong, in words.
        public var reason: String

        /// `line N: reason (code): text`.
        public var description: String { "line \(line): \(reason) (\(code)): \(text)" }
    }

    /// The families, keyed by family name (`x` for a histogram's `x_bucket`, `x_sum`, `x_count`).
    public private(set) var families: [String: Family]
    /// Each sample's value, by sample name and labels.
    private var values: [SeriesKey: Double]

    /// Parses `text`, throwing at the first line that breaks a rule of the format.
    public init(parsing text: String) throws(ParseError) {
        var parser = Parser(bytes: Array(text.utf8))
        try parser.run()
        families = parser.families.mapValues(\.family)
        values = parser.values
    }

    /// Parses `bytes` (an HTTP body, say), which must be UTF-8.
    public init(parsingUTF8 bytes: [UInt8]) throws(ParseError) {
        var line = 1
        var lineStart = 0
        var index = 0
        while index < bytes.count {
            let length = Self.utf8SequenceLength(bytes, at: index)
            guard length > 0 else {
                let end = bytes[index...].firstIndex(of: 0x0A) ?? bytes.count
                throw ParseError(code: .invalidUTF8, line: line,
                                 text: String(decoding: bytes[lineStart..<end], as: UTF8.self),
                                 reason: "byte \(index - lineStart + 1) of the line is not UTF-8")
            }
            if bytes[index] == 0x0A {
                line += 1
                lineStart = index + 1
            }
            index += length
        }
        try self.init(parsing: String(decoding: bytes, as: UTF8.self))
    }

    /// The family named `name` (`x`, not `x_bucket`).
    public func family(_ name: String) -> Family? {
        families[name]
    }

    /// The value of the sample named `name` (`x_bucket`, `x_sum`, … for a histogram) with exactly
    /// the labels `labels` (`le` or `quantile` included where the sample has one).
    public func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        values[SeriesKey(name: name, labels: labels)]
    }

    /// The series of histogram `name` whose labels, less `le`, are `labels`.
    public func histogram(_ name: String, _ labels: [String: String] = [:]) -> Histogram? {
        guard let family = families[name], family.type == .histogram,
              let sum = value(name + "_sum", labels), let count = value(name + "_count", labels)
        else { return nil }
        var buckets: [Histogram.Bucket] = []
        for sample in family.samples where sample.name == name + "_bucket" {
            var seriesLabels = sample.labels
            guard let le = seriesLabels.removeValue(forKey: "le"), seriesLabels == labels,
                  let bound = parseFloat(le.utf8)
            else { continue }
            buckets.append(Histogram.Bucket(upperBound: bound, cumulativeCount: sample.value))
        }
        return Histogram(buckets: buckets, sum: sum, count: count)
    }

    /// Departures from Prometheus' naming conventions, which the format does not require, one line
    /// each, sorted by family: a counter not ending in `_total` (or another type ending in it), a
    /// unit other than a base unit in the name (`_ms`, `_milliseconds`, `_kb`, `_percent`, …), a
    /// histogram or summary of time not ending in `_seconds`, a family without `HELP` text or
    /// without a type, and with `prefix` given, a name that does not start with it.
    public func conventionProblems(prefix: String? = nil) -> [String] {
        var problems: [String] = []
        for family in families.values.sorted(by: { $0.name < $1.name }) {
            let name = family.name
            let words = name.split(separator: "_").map { $0.lowercased() }
            if let prefix, !name.hasPrefix(prefix) {
                problems.append("\(name): does not start with \(prefix)")
            }
            if family.type == .counter, !name.hasSuffix("_total") {
                problems.append("\(name): a counter's name should end in _total")
            }
            if family.type != .counter, name.hasSuffix("_total") {
                problems.append("\(name): _total is for counters, and this is a \(family.type.rawValue)")
            }
            for word in words {
                if let base = Self.nonBaseUnits[word] {
                    problems.append("\(name): \(word) is not a base unit; use \(base)")
                }
            }
            if family.type == .histogram || family.type == .summary, !name.hasSuffix("_seconds"),
               words.contains(where: { Self.timeWords.contains($0) || Self.nonBaseUnits[$0] == "seconds" }) {
                problems.append("\(name): a \(family.type.rawValue) of time should be in seconds and end in _seconds")
            }
            if family.help?.isEmpty ?? true {
                problems.append("\(name): has no HELP text")
            }
            if family.type == .untyped {
                problems.append("\(name): is untyped")
            }
        }
        return problems
    }

    /// Words naming units other than base ones, and the base unit to use instead.
    private static let nonBaseUnits: [String: String] = [
        "ms": "seconds", "msec": "seconds", "millis": "seconds", "millisecond": "seconds",
        "milliseconds": "seconds", "us": "seconds", "usec": "seconds", "micros": "seconds",
        "microsecond": "seconds", "microseconds": "seconds", "ns": "seconds", "nsec": "seconds",
        "nanos": "seconds", "nanosecond": "seconds", "nanoseconds": "seconds", "minute": "seconds",
        "minutes": "seconds", "hour": "seconds", "hours": "seconds", "day": "seconds", "days": "seconds",
        "kb": "bytes", "kib": "bytes", "kilobytes": "bytes", "mb": "bytes", "mib": "bytes",
        "megabytes": "bytes", "gb": "bytes", "gib": "bytes", "gigabytes": "bytes", "bits": "bytes",
        "percent": "ratio (0 to 1)", "percentage": "ratio (0 to 1)", "pct": "ratio (0 to 1)",
    ]

    /// Words that make a histogram one of time.
    private static let timeWords: Set<String> = [
        "latency", "latencies", "duration", "durations", "time", "times", "delay", "wait", "elapsed", "lag", "rtt",
    ]

    private static func utf8SequenceLength(_ bytes: [UInt8], at index: Int) -> Int {
        let lead = bytes[index]
        let (length, low, high): (Int, UInt8, UInt8)
        switch lead {
        case 0x00...0x7F: return 1
        case 0xC2...0xDF: (length, low, high) = (2, 0x80, 0xBF)
        case 0xE0: (length, low, high) = (3, 0xA0, 0xBF)
        case 0xE1...0xEC, 0xEE...0xEF: (length, low, high) = (3, 0x80, 0xBF)
        case 0xED: (length, low, high) = (3, 0x80, 0x9F)
        case 0xF0: (length, low, high) = (4, 0x90, 0xBF)
        case 0xF1...0xF3: (length, low, high) = (4, 0x80, 0xBF)
        case 0xF4: (length, low, high) = (4, 0x80, 0x8F)
        default: return 0
        }
        guard index + length <= bytes.count, (low...high).contains(bytes[index + 1]) else { return 0 }
        for next in bytes[(index + 2)..<(index + length)] where !(0x80...0xBF).contains(next) {
            return 0
        }
        return length
    }
}

/// A sample's identity: its name and label set.
private struct SeriesKey: Hashable, Sendable {
    var name: String
    var labels: [String: String]
}

/// The parse of one text: a line at a time, each rule checked as soon as a line can break it.
private struct Parser {
    struct FamilyState {
        var family: PrometheusExposition.Family
        var typeDeclared = false
        /// Per series (labels less `le`/`quantile`) of a histogram or summary, in order of appearance.
        var series: [[String: String]: SeriesState] = [:]
        var seriesOrder: [[String: String]] = []
    }

    struct SeriesState {
        var lastLine: Int
        var lastBound: Double?
        /// `lastBound` as the text wrote it.
        var lastBoundText = ""
        var lastBucketCount: Double?
        var infCount: (value: Double, line: Int)?
        var count: (value: Double, line: Int)?
        var hasSum = false
    }

    /// What a sample is to its family.
    enum Role { case plain, bucket, sum, count }

    let bytes: [UInt8]
    var families: [String: FamilyState] = [:]
    var values: [SeriesKey: Double] = [:]
    /// The line where each series was seen, for the duplicate-series message.
    var seriesLines: [SeriesKey: Int] = [:]
    var current: String?
    /// Families whose lines ended: the line that ended each, and the family of that line.
    var closed: [String: (line: Int, by: String)] = [:]

    var lineNumber = 0
    var line: ArraySlice<UInt8> = []
    var position = 0

    init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    mutating func run() throws(PrometheusExposition.ParseError) {
        var start = 0
        while start < bytes.count {
            lineNumber += 1
            guard let end = bytes[start...].firstIndex(of: 0x0A) else {
                line = bytes[start...]
                throw error(.lineEnding, "the last line does not end with \\n")
            }
            line = bytes[start..<end]
            position = line.startIndex
            try parseLine()
            start = end + 1
        }
        if let current { try close(current) }
    }

    // MARK: Lines

    mutating func parseLine() throws(PrometheusExposition.ParseError) {
        if line.contains(0x0D) { throw error(.lineEnding, "a line contains \\r; lines end with \\n alone") }
        skipBlanks()
        guard let first = peek else { return }
        if first == UInt8(ascii: "#") {
            position += 1
            try parseComment()
        } else {
            try parseSample()
        }
    }

    mutating func parseComment() throws(PrometheusExposition.ParseError) {
        skipBlanks()
        let keyword = String(decoding: readToken(), as: UTF8.self)
        guard keyword == "HELP" || keyword == "TYPE" else { return }  // a comment
        skipBlanks()
        let nameBytes = readToken()
        guard !nameBytes.isEmpty else { throw error(.syntax, "a \(keyword) line without a metric name") }
        guard isMetricName(nameBytes) else {
            throw error(.invalidMetricName, "\(quoted(nameBytes)) is not a valid metric name")
        }
        let name = String(decoding: nameBytes, as: UTF8.self)
        skipBlanks()
        let rest = line[position...]
        try enter(name)
        if keyword == "HELP" {
            if families[name]?.family.help != nil {
                throw error(.duplicateHelp, "a second HELP line for \(name)")
            }
            let help = try unescape(rest, allowQuote: false)
            families[name, default: Self.newFamily(name)].family.help = help
        } else {
            let typeName = String(decoding: rest, as: UTF8.self).trimmingBlanks
            guard !typeName.isEmpty else { throw error(.syntax, "a TYPE line without a type") }
            guard let type = PrometheusExposition.MetricType(rawValue: typeName) else {
                throw error(.unknownType, "unknown type \(typeName) (counter, gauge, histogram, summary or untyped)")
            }
            if let state = families[name] {
                if state.typeDeclared { throw error(.duplicateType, "a second TYPE line for \(name)") }
                if !state.family.samples.isEmpty {
                    throw error(.typeAfterSamples, "the TYPE line for \(name) comes after its samples")
                }
            }
            families[name, default: Self.newFamily(name)].family.type = type
            families[name]!.typeDeclared = true
        }
    }

    mutating func parseSample() throws(PrometheusExposition.ParseError) {
        let nameStart = position
        while let byte = peek, isMetricNameByte(byte, first: position == nameStart) { position += 1 }
        let nameBytes = line[nameStart..<position]
        if let byte = peek, !isBlank(byte), byte != UInt8(ascii: "{") {
            let token = line[nameStart..<(line[position...].firstIndex(where: isBlank) ?? line.endIndex)]
            throw error(.invalidMetricName, "\(quoted(token)) is not a valid metric name")
        }
        if nameBytes.isEmpty { throw error(.invalidMetricName, "a sample without a metric name") }
        let name = String(decoding: nameBytes, as: UTF8.self)
        skipBlanks()

        var labels: [String: String] = [:]
        if peek == UInt8(ascii: "{") {
            position += 1
            labels = try parseLabels()
        }
        skipBlanks()
        let valueBytes = readToken()
        guard !valueBytes.isEmpty else { throw error(.syntax, "a sample without a value") }
        guard let value = parseFloat(valueBytes) else {
            throw error(.invalidValue, "\(quoted(valueBytes)) is not a float value")
        }
        skipBlanks()
        var timestamp: Int64?
        if peek != nil {
            let token = readToken()
            guard let parsed = parseTimestamp(token) else {
                throw error(.invalidTimestamp, "\(quoted(token)) is not an integer timestamp")
            }
            timestamp = parsed
            skipBlanks()
            if peek != nil { throw error(.syntax, "text after the timestamp") }
        }
        try record(PrometheusExposition.Sample(name: name, labels: labels, value: value, timestamp: timestamp))
    }

    /// The label set after its `{`, up to and with its `}`.
    mutating func parseLabels() throws(PrometheusExposition.ParseError) -> [String: String] {
        var labels: [String: String] = [:]
        while true {
            skipBlanks()
            guard let byte = peek else { throw error(.syntax, "the label set has no closing }") }
            if byte == UInt8(ascii: "}") {
                position += 1
                return labels
            }
            let nameStart = position
            while let byte = peek, isLabelNameByte(byte, first: position == nameStart) { position += 1 }
            let nameBytes = line[nameStart..<position]
            if let byte = peek, !isBlank(byte), byte != UInt8(ascii: "=") {
                let end = line[position...].firstIndex(where: { isBlank($0) || $0 == UInt8(ascii: "=") }) ?? line.endIndex
                throw error(.invalidLabelName, "\(quoted(line[nameStart..<end])) is not a valid label name")
            }
            guard !nameBytes.isEmpty else { throw error(.invalidLabelName, "a label without a name") }
            let name = String(decoding: nameBytes, as: UTF8.self)
            if name.hasPrefix("__") {
                throw error(.reservedLabelName, "label names starting with __ are reserved, as \(name) is")
            }
            skipBlanks()
            guard peek == UInt8(ascii: "=") else { throw error(.syntax, "label \(name) has no = after its name") }
            position += 1
            skipBlanks()
            guard peek == UInt8(ascii: "\"") else { throw error(.syntax, "label \(name)'s value is not quoted") }
            position += 1
            let valueStart = position
            var escaped = false
            while let byte = peek, escaped || byte != UInt8(ascii: "\"") {
                escaped = !escaped && byte == UInt8(ascii: "\\")
                position += 1
            }
            guard peek != nil else { throw error(.syntax, "label \(name)'s value has no closing quote") }
            let value = try unescape(line[valueStart..<position], allowQuote: true)
            position += 1
            if labels.updateValue(value, forKey: name) != nil {
                throw error(.duplicateLabelName, "label \(name) appears twice")
            }
            skipBlanks()
            switch peek {
            case UInt8(ascii: ","): position += 1
            case UInt8(ascii: "}"): continue
            default: throw error(.syntax, "a label is followed by neither , nor }")
            }
        }
    }

    // MARK: Families and samples

    static func newFamily(_ name: String) -> FamilyState {
        FamilyState(family: PrometheusExposition.Family(name: name, type: .untyped, help: nil, samples: []))
    }

    /// Makes `name` the current family, checking that its lines are contiguous, and checks the
    /// family it ends.
    mutating func enter(_ name: String) throws(PrometheusExposition.ParseError) {
        guard name != current else { return }
        if let ended = closed[name] {
            throw error(.splitFamily, "the lines of \(name) are split: \(ended.by) on line \(ended.line) came between them")
        }
        if let current {
            try close(current)
            closed[current] = (lineNumber, name)
        }
        current = name
    }

    /// The family a sample belongs to and what the sample is to it.
    func attribute(_ sampleName: String) -> (family: String, role: Role) {
        if families[sampleName] != nil {
            return (sampleName, .plain)
        }
        for (suffix, role) in [("_bucket", Role.bucket), ("_sum", .sum), ("_count", .count)]
        where sampleName.hasSuffix(suffix) && sampleName.count > suffix.count {
            let base = String(sampleName.dropLast(suffix.count))
            switch families[base]?.family.type {
            case .histogram?: return (base, role)
            case .summary? where role != .bucket: return (base, role)
            default: continue
            }
        }
        return (sampleName, .plain)
    }

    mutating func record(_ sample: PrometheusExposition.Sample) throws(PrometheusExposition.ParseError) {
        let (familyName, role) = attribute(sample.name)
        try enter(familyName)
        let key = SeriesKey(name: sample.name, labels: sample.labels)
        if let earlier = seriesLines[key] {
            throw error(.duplicateSeries, "the same series as on line \(earlier)")
        }
        var state = families[familyName] ?? Self.newFamily(familyName)
        switch state.family.type {
        case .counter:
            if sample.value < 0 || sample.value.isNaN {
                throw error(.negativeCounter, "counter \(familyName) is \(sample.value)")
            }
        case .histogram:
            try checkHistogram(sample, role: role, family: familyName, state: &state)
        case .summary:
            try checkSummary(sample, role: role, family: familyName, state: &state)
        case .gauge, .untyped:
            break
        }
        state.family.samples.append(sample)
        families[familyName] = state
        values[key] = sample.value
        seriesLines[key] = lineNumber
    }

    func checkHistogram(
        _ sample: PrometheusExposition.Sample, role: Role, family: String, state: inout FamilyState
    ) throws(PrometheusExposition.ParseError) {
        var labels = sample.labels
        let le = labels.removeValue(forKey: "le")
        var series = state.series[labels] ?? SeriesState(lastLine: lineNumber)
        series.lastLine = lineNumber
        switch role {
        case .plain:
            throw error(.misplacedSample, "a sample of histogram \(family) is named \(family)_bucket, _sum or _count")
        case .bucket:
            guard let le else { throw error(.misplacedSample, "bucket of \(family) without an le label") }
            guard let bound = parseFloat(le.utf8), !bound.isNaN else {
                throw error(.invalidBound, "le=\"\(le)\" is not a float")
            }
            if let last = series.lastBound, !(bound > last) {
                throw error(.boundsOutOfOrder, "buckets come in increasing le order, but le=\"\(le)\" follows le=\"\(series.lastBoundText)\"")
            }
            try checkCount(sample.value, of: "bucket le=\"\(le)\"")
            if let last = series.lastBucketCount, sample.value < last {
                throw error(.bucketsNotCumulative, "bucket le=\"\(le)\" counts \(sample.value), fewer than the \(last) below it")
            }
            series.lastBound = bound
            series.lastBoundText = le
            series.lastBucketCount = sample.value
            if bound == .infinity {
                series.infCount = (sample.value, lineNumber)
            }
        case .sum, .count:
            if le != nil { throw error(.misplacedSample, "\(sample.name) has an le label") }
            if role == .sum {
                series.hasSum = true
            } else {
                try checkCount(sample.value, of: sample.name)
                series.count = (sample.value, lineNumber)
            }
        }
        if let inf = series.infCount, let count = series.count, inf.value != count.value {
            throw error(.infBucketMismatch,
                        "the +Inf bucket (line \(inf.line)) counts \(inf.value), \(family)_count (line \(count.line)) \(count.value)")
        }
        if state.series[labels] == nil { state.seriesOrder.append(labels) }
        state.series[labels] = series
    }

    func checkSummary(
        _ sample: PrometheusExposition.Sample, role: Role, family: String, state: inout FamilyState
    ) throws(PrometheusExposition.ParseError) {
        var labels = sample.labels
        let quantile = labels.removeValue(forKey: "quantile")
        var series = state.series[labels] ?? SeriesState(lastLine: lineNumber)
        series.lastLine = lineNumber
        switch role {
        case .plain:
            guard let quantile else { throw error(.misplacedSample, "a quantile of summary \(family) without a quantile label") }
            guard let bound = parseFloat(quantile.utf8), bound >= 0, bound <= 1 else {
                throw error(.invalidBound, "quantile=\"\(quantile)\" is not a float from 0 to 1")
            }
            if let last = series.lastBound, !(bound > last) {
                throw error(.boundsOutOfOrder, "quantiles come in increasing order, but \(quantile) follows \(series.lastBoundText)")
            }
            series.lastBound = bound
            series.lastBoundText = quantile
        case .sum, .count:
            if quantile != nil { throw error(.misplacedSample, "\(sample.name) has a quantile label") }
            if role == .sum {
                series.hasSum = true
            } else {
                try checkCount(sample.value, of: sample.name)
                series.count = (sample.value, lineNumber)
            }
        case .bucket:
            preconditionFailure("a summary has no buckets")
        }
        if state.series[labels] == nil { state.seriesOrder.append(labels) }
        state.series[labels] = series
    }

    func checkCount(_ value: Double, of what: String) throws(PrometheusExposition.ParseError) {
        guard value >= 0, value.isFinite, value.rounded() == value else {
            throw error(.invalidCount, "\(what) is \(value), not a count")
        }
    }

    /// The checks a histogram or summary can only make once all its lines are read.
    func close(_ name: String) throws(PrometheusExposition.ParseError) {
        guard let state = families[name] else { return }
        for labels in state.seriesOrder {
            let series = state.series[labels]!
            let what = labels.isEmpty ? name : "\(name)\(labelText(labels))"
            if state.family.type == .histogram, series.infCount == nil {
                throw error(.missingInfBucket, "histogram \(what) has no le=\"+Inf\" bucket", at: series.lastLine)
            }
            if !series.hasSum || series.count == nil {
                throw error(.missingSumOrCount,
                            "\(state.family.type.rawValue) \(what) has no \(series.hasSum ? "_count" : "_sum")",
                            at: series.lastLine)
            }
        }
    }

    // MARK: Lexing

    var peek: UInt8? { position < line.endIndex ? line[position] : nil }

    mutating func skipBlanks() {
        while let byte = peek, isBlank(byte) { position += 1 }
    }

    /// The bytes up to the next blank or the end of the line.
    mutating func readToken() -> ArraySlice<UInt8> {
        let start = position
        while let byte = peek, !isBlank(byte) { position += 1 }
        return line[start..<position]
    }

    /// `text` with its escapes replaced: `\\` and `\n`, and `\"` if `allowQuote`.
    func unescape(_ text: ArraySlice<UInt8>, allowQuote: Bool) throws(PrometheusExposition.ParseError) -> String {
        guard text.contains(UInt8(ascii: "\\")) else { return String(decoding: text, as: UTF8.self) }
        var result: [UInt8] = []
        var index = text.startIndex
        while index < text.endIndex {
            let byte = text[index]
            index += 1
            guard byte == UInt8(ascii: "\\") else {
                result.append(byte)
                continue
            }
            guard index < text.endIndex else { throw error(.invalidEscape, "a lone \\ at the end") }
            switch text[index] {
            case UInt8(ascii: "\\"): result.append(UInt8(ascii: "\\"))
            case UInt8(ascii: "n"): result.append(0x0A)
            case UInt8(ascii: "\"") where allowQuote: result.append(UInt8(ascii: "\""))
            default:
                throw error(.invalidEscape, "invalid escape \\\(String(decoding: [text[index]], as: UTF8.self))")
            }
            index += 1
        }
        return String(decoding: result, as: UTF8.self)
    }

    func error(_ code: PrometheusExposition.ParseError.Code, _ reason: String, at line: Int? = nil)
        -> PrometheusExposition.ParseError
    {
        let number = line ?? lineNumber
        return PrometheusExposition.ParseError(code: code, line: number, text: text(ofLine: number), reason: reason)
    }

    func text(ofLine number: Int) -> String {
        if number == lineNumber { return String(decoding: line, as: UTF8.self) }
        let lines = bytes.split(separator: 0x0A, omittingEmptySubsequences: false)
        return number - 1 < lines.count ? String(decoding: lines[number - 1], as: UTF8.self) : ""
    }
}

// MARK: Tokens

private func isBlank(_ byte: UInt8) -> Bool { byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }

private func isLabelNameByte(_ byte: UInt8, first: Bool) -> Bool {
    switch byte {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "_"): true
    case UInt8(ascii: "0")...UInt8(ascii: "9"): !first
    default: false
    }
}

private func isMetricNameByte(_ byte: UInt8, first: Bool) -> Bool {
    byte == UInt8(ascii: ":") || isLabelNameByte(byte, first: first)
}

private func isMetricName(_ bytes: ArraySlice<UInt8>) -> Bool {
    !bytes.isEmpty && bytes.indices.allSatisfy { isMetricNameByte(bytes[$0], first: $0 == bytes.startIndex) }
}

private func quoted(_ bytes: ArraySlice<UInt8>) -> String {
    "\"\(String(decoding: bytes, as: UTF8.self))\""
}

private func labelText(_ labels: [String: String]) -> String {
    "{" + labels.sorted(by: { $0.key < $1.key }).map { "\($0.key)=\"\($0.value)\"" }.joined(separator: ",") + "}"
}

/// A float as Go's `strconv.ParseFloat` reads it and Prometheus accepts it: decimal with an
/// optional sign, fraction and exponent, or `Inf`/`Infinity` with an optional sign, or `NaN`, the
/// words in any case; no hexadecimal, no `_`; nil also for a finite number too large for a Double.
private func parseFloat<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> Double? {
    let text = String(decoding: bytes, as: UTF8.self)
    let lower = text.lowercased()
    if lower == "nan" { return .nan }
    var unsigned = lower[...]
    var negative = false
    if let sign = unsigned.first, sign == "+" || sign == "-" {
        negative = sign == "-"
        unsigned = unsigned.dropFirst()
    }
    if unsigned == "inf" || unsigned == "infinity" { return negative ? -.infinity : .infinity }
    // [digits][.digits] with at least one digit, then an optional exponent.
    var index = unsigned.utf8.startIndex
    let utf8 = unsigned.utf8
    func digits() -> Int {
        var count = 0
        while index < utf8.endIndex, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(utf8[index]) {
            count += 1
            index = utf8.index(after: index)
        }
        return count
    }
    var mantissaDigits = digits()
    if index < utf8.endIndex, utf8[index] == UInt8(ascii: ".") {
        index = utf8.index(after: index)
        mantissaDigits += digits()
    }
    guard mantissaDigits > 0 else { return nil }
    if index < utf8.endIndex, utf8[index] == UInt8(ascii: "e") {
        index = utf8.index(after: index)
        if index < utf8.endIndex, utf8[index] == UInt8(ascii: "+") || utf8[index] == UInt8(ascii: "-") {
            index = utf8.index(after: index)
        }
        guard digits() > 0 else { return nil }
    }
    guard index == utf8.endIndex else { return nil }
    // Swift reads "5." and ".5" as Go does; a number out of range comes back infinite.
    guard let value = Double(lower), value.isFinite else { return nil }
    return value
}

/// A decimal 64-bit integer with an optional sign, as Go's `strconv.ParseInt(s, 10, 64)` reads it.
private func parseTimestamp(_ bytes: ArraySlice<UInt8>) -> Int64? {
    var digits = bytes
    if let sign = digits.first, sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-") { digits = digits.dropFirst() }
    guard !digits.isEmpty, digits.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) else { return nil }
    return Int64(String(decoding: bytes, as: UTF8.self))
}

extension String {
    fileprivate var trimmingBlanks: String {
        var text = self[...]
        while let last = text.last, last == " " || last == "\t" { text = text.dropLast() }
        return String(text)
    }
}
