import CatenaTestSupport
import Testing

/// The lines given, each ended by `\n`.
private func lines(_ lines: String...) -> String {
    lines.map { $0 + "\n" }.joined()
}

/// A text that breaks one rule, the line where it does and the code that says which rule.
struct BrokenRule: Sendable, CustomTestStringConvertible {
    var name: String
    var text: String
    var line: Int
    var code: PrometheusExposition.ParseError.Code
    var testDescription: String { name }

    init(_ name: String, _ code: PrometheusExposition.ParseError.Code, line: Int, _ text: String) {
        self.name = name
        self.text = text
        self.line = line
        self.code = code
    }
}

/// A histogram `h` with the lines given between its TYPE line and an unrelated gauge after it.
private func histogram(_ body: String...) -> String {
    lines(["# TYPE h histogram"] + body + ["other 1"])
}

private func lines(_ list: [String]) -> String {
    list.map { $0 + "\n" }.joined()
}

private let brokenRules: [BrokenRule] = [
    // Lines.
    BrokenRule("no final newline", .lineEnding, line: 2, "a 1\nb 2"),
    BrokenRule("carriage return", .lineEnding, line: 2, "a 1\nb 2\r\n"),
    // Shape of lines.
    BrokenRule("unterminated label set", .syntax, line: 1, lines(#"a{b="c" 1"#)),
    BrokenRule("unquoted label value", .syntax, line: 2, lines("x 1", "a{b=c} 1")),
    BrokenRule("label without =", .syntax, line: 1, lines(#"a{b "c"} 1"#)),
    BrokenRule("labels without comma", .syntax, line: 1, lines(#"a{b="1" c="2"} 1"#)),
    BrokenRule("unterminated label value", .syntax, line: 1, lines(#"a{b="c} 1"#)),
    BrokenRule("sample without value", .syntax, line: 3, lines("# a comment", "", "a")),
    BrokenRule("text after timestamp", .syntax, line: 1, lines("a 1 2 3")),
    BrokenRule("TYPE without type", .syntax, line: 1, lines("# TYPE a", "a 1")),
    BrokenRule("HELP without name", .syntax, line: 1, lines("# HELP")),
    // Escapes.
    BrokenRule("\\t in HELP", .invalidEscape, line: 1, lines(#"# HELP a tab\there"#, "a 1")),
    BrokenRule("\\\" in HELP", .invalidEscape, line: 1, lines(#"# HELP a say \"hi\""#, "a 1")),
    BrokenRule("lone \\ ending HELP", .invalidEscape, line: 1, lines(#"# HELP a ends in \"#, "a 1")),
    BrokenRule("\\t in label value", .invalidEscape, line: 1, lines(#"a{b="\t"} 1"#)),
    // Names.
    BrokenRule("metric name starting with a digit", .invalidMetricName, line: 1, lines("1a 1")),
    BrokenRule("- in metric name", .invalidMetricName, line: 1, lines("a-b 1")),
    BrokenRule("sample without metric name", .invalidMetricName, line: 1, lines(#"{b="c"} 1"#)),
    BrokenRule(". in HELP's metric name", .invalidMetricName, line: 1, lines("# HELP a.b text")),
    BrokenRule("label name starting with a digit", .invalidLabelName, line: 1, lines(#"a{1b="c"} 1"#)),
    BrokenRule(": in label name", .invalidLabelName, line: 1, lines(#"a{b:c="d"} 1"#)),
    BrokenRule("empty label name", .invalidLabelName, line: 1, lines(#"a{="d"} 1"#)),
    BrokenRule("__name__ label", .reservedLabelName, line: 1, lines(#"a{__name__="x"} 1"#)),
    BrokenRule("duplicate label name", .duplicateLabelName, line: 2, lines("x 1", #"a{b="1",c="2",b="1"} 1"#)),
    // Values and timestamps.
    BrokenRule("word for value", .invalidValue, line: 1, lines("a one")),
    BrokenRule("hexadecimal value", .invalidValue, line: 1, lines("a 0x1p3")),
    BrokenRule("_ in value", .invalidValue, line: 1, lines("a 1_000")),
    BrokenRule("value out of range", .invalidValue, line: 1, lines("a 1e400")),
    BrokenRule("signed NaN", .invalidValue, line: 1, lines("a -NaN")),
    BrokenRule("lone dot", .invalidValue, line: 1, lines("a .")),
    BrokenRule("exponent without digits", .invalidValue, line: 1, lines("a 1e")),
    BrokenRule("fractional timestamp", .invalidTimestamp, line: 1, lines("a 1 1.5")),
    BrokenRule("timestamp out of range", .invalidTimestamp, line: 1, lines("a 1 99999999999999999999")),
    // HELP and TYPE.
    BrokenRule("unknown type", .unknownType, line: 1, lines("# TYPE a counters", "a 1")),
    BrokenRule("type in capitals", .unknownType, line: 1, lines("# TYPE a COUNTER", "a 1")),
    BrokenRule("second HELP", .duplicateHelp, line: 3, lines("# HELP a one", "# TYPE a gauge", "# HELP a two", "a 1")),
    BrokenRule("second TYPE", .duplicateType, line: 2, lines("# TYPE a gauge", "# TYPE a gauge", "a 1")),
    BrokenRule("TYPE after samples", .typeAfterSamples, line: 2, lines("a 1", "# TYPE a gauge")),
    // Families and series.
    BrokenRule("family split by another", .splitFamily, line: 4, lines(#"a{x="1"} 1"#, "b 1", "", #"a{x="2"} 1"#)),
    BrokenRule("HELP after the family ended", .splitFamily, line: 3, lines("a 1", "b 1", "# HELP a late")),
    BrokenRule("histogram split by another", .splitFamily, line: 6,
               lines("# TYPE h histogram", #"h_bucket{le="+Inf"} 1"#, "h_sum 1", "h_count 1", "other 1", "h_sum 2")),
    BrokenRule("duplicate series", .duplicateSeries, line: 3, lines(#"a{b="1"} 1"#, #"a{b="2"} 1"#, #"a{b="1"} 2"#)),
    BrokenRule("duplicate series, labels reordered", .duplicateSeries, line: 2,
               lines(#"a{x="1",y="2"} 1"#, #"a{y="2",x="1"} 1"#)),
    BrokenRule("duplicate series without labels", .duplicateSeries, line: 2, lines("a 1", "a{} 2")),
    // Counters.
    BrokenRule("negative counter", .negativeCounter, line: 3, lines("# TYPE a_total counter", "a_total 1", #"a_total{x="y"} -1"#)),
    BrokenRule("NaN counter", .negativeCounter, line: 2, lines("# TYPE a_total counter", "a_total NaN")),
    // Histograms.
    BrokenRule("histogram sample named as the family", .misplacedSample, line: 2, histogram("h 1")),
    BrokenRule("bucket without le", .misplacedSample, line: 2, histogram("h_bucket 1")),
    BrokenRule("le on _sum", .misplacedSample, line: 3, histogram(#"h_bucket{le="+Inf"} 1"#, #"h_sum{le="1"} 1"#)),
    BrokenRule("le not a float", .invalidBound, line: 2, histogram(#"h_bucket{le="big"} 1"#)),
    BrokenRule("le NaN", .invalidBound, line: 2, histogram(#"h_bucket{le="NaN"} 1"#)),
    BrokenRule("buckets out of order", .boundsOutOfOrder, line: 3,
               histogram(#"h_bucket{le="1"} 1"#, #"h_bucket{le="0.5"} 1"#, #"h_bucket{le="+Inf"} 1"#, "h_sum 1", "h_count 1")),
    BrokenRule("one bound twice, spelled two ways", .boundsOutOfOrder, line: 3,
               histogram(#"h_bucket{le="1"} 1"#, #"h_bucket{le="1.0"} 1"#)),
    BrokenRule("bucket after +Inf", .boundsOutOfOrder, line: 3, histogram(#"h_bucket{le="+Inf"} 1"#, #"h_bucket{le="2"} 1"#)),
    BrokenRule("buckets not cumulative", .bucketsNotCumulative, line: 3,
               histogram(#"h_bucket{le="1"} 5"#, #"h_bucket{le="2"} 3"#, #"h_bucket{le="+Inf"} 5"#, "h_sum 1", "h_count 5")),
    BrokenRule("fractional bucket count", .invalidCount, line: 2, histogram(#"h_bucket{le="1"} 1.5"#)),
    BrokenRule("negative _count", .invalidCount, line: 3, histogram(#"h_bucket{le="+Inf"} 0"#, "h_count -1")),
    BrokenRule("no +Inf bucket", .missingInfBucket, line: 4, histogram(#"h_bucket{le="1"} 1"#, "h_sum 1", "h_count 1")),
    BrokenRule("no +Inf bucket in the second series", .missingInfBucket, line: 8,
               histogram(#"h_bucket{x="a",le="+Inf"} 1"#, #"h_sum{x="a"} 1"#, #"h_count{x="a"} 1"#,
                         #"h_bucket{x="b",le="1"} 1"#, #"h_sum{x="b"} 1"#, "# a comment", #"h_count{x="b"} 1"#)),
    BrokenRule("no +Inf bucket at the end of the text", .missingInfBucket, line: 3,
               lines("# TYPE h histogram", "h_sum 1", "h_count 0")),
    BrokenRule("+Inf bucket is not _count", .infBucketMismatch, line: 5,
               histogram(#"h_bucket{le="1"} 3"#, #"h_bucket{le="+Inf"} 3"#, "h_sum 1", "h_count 4")),
    BrokenRule("_count before a different +Inf bucket", .infBucketMismatch, line: 4,
               histogram("h_count 4", "h_sum 1", #"h_bucket{le="+Inf"} 3"#)),
    BrokenRule("no _sum", .missingSumOrCount, line: 3, histogram(#"h_bucket{le="+Inf"} 1"#, "h_count 1")),
    BrokenRule("no _count", .missingSumOrCount, line: 3, histogram(#"h_bucket{le="+Inf"} 1"#, "h_sum 1")),
    // Summaries.
    BrokenRule("summary quantile without quantile label", .misplacedSample, line: 2, lines("# TYPE s summary", "s 1")),
    BrokenRule("quantile on _count", .misplacedSample, line: 2, lines("# TYPE s summary", #"s_count{quantile="0.5"} 1"#)),
    BrokenRule("quantile above 1", .invalidBound, line: 2, lines("# TYPE s summary", #"s{quantile="1.5"} 1"#)),
    BrokenRule("quantiles out of order", .boundsOutOfOrder, line: 3,
               lines("# TYPE s summary", #"s{quantile="0.9"} 1"#, #"s{quantile="0.5"} 1"#)),
    BrokenRule("summary without _count", .missingSumOrCount, line: 3,
               lines("# TYPE s summary", #"s{quantile="0.5"} 1"#, "s_sum 1", "t 1")),
]

@Suite("Prometheus exposition parser")
struct PrometheusExpositionTests {
    /// HELP and TYPE lines, counters, gauges, escaped label values, special values, a timestamp, a
    /// histogram of two series and a summary: all parse, and the lookups find what was written.
    @Test func parsesAValidExposition() throws {
        let text = lines(
            "# A comment, and an empty line after it.",
            "",
            #"# HELP catena_puts_total Puts received, by \\role\\;\nsecond line."#,
            "# TYPE catena_puts_total counter",
            #"catena_puts_total{role="head"} 1027"#,
            #"catena_puts_total{ role = "tail" , } 3 1712345678901"#,
            "#TYPE catena_temperature gauge",
            #"catena_temperature{path="C:\\data\\x \"1\"\nnext",node="n1"} -1.5e-3"#,
            "  catena_temperature\t+Inf",
            #"catena_temperature{node="n2"} NaN"#,
            #"catena_temperature{node="n3"} -Inf"#,
            "untyped_thing 42",
            "# HELP catena_put_seconds Put latency.",
            "# TYPE catena_put_seconds histogram",
            #"catena_put_seconds_bucket{role="head",le="0.005"} 1"#,
            #"catena_put_seconds_bucket{role="head",le="0.1"} 3"#,
            #"catena_put_seconds_bucket{role="head",le="+Inf"} 4"#,
            #"catena_put_seconds_sum{role="head"} 1.25"#,
            #"catena_put_seconds_count{role="head"} 4"#,
            #"catena_put_seconds_bucket{role="tail",le="0.005"} 0"#,
            #"catena_put_seconds_bucket{role="tail",le="0.1"} 0"#,
            #"catena_put_seconds_bucket{role="tail",le="+Inf"} 0"#,
            #"catena_put_seconds_sum{role="tail"} 0"#,
            #"catena_put_seconds_count{role="tail"} 0"#,
            "# TYPE catena_rpc_seconds summary",
            #"catena_rpc_seconds{quantile="0.5"} 0.01"#,
            #"catena_rpc_seconds{quantile="0.99"} NaN"#,
            "catena_rpc_seconds_sum 0.5",
            "catena_rpc_seconds_count 20",
            "# HELP only_help Described, never sampled."
        )
        let exposition = try PrometheusExposition(parsing: text)
        #expect(Set(exposition.families.keys) == [
            "catena_puts_total", "catena_temperature", "untyped_thing", "catena_put_seconds", "catena_rpc_seconds", "only_help",
        ])

        let puts = try #require(exposition.family("catena_puts_total"))
        #expect(puts.type == .counter)
        #expect(puts.help == "Puts received, by \\role\\;\nsecond line.")
        #expect(puts.samples == [
            .init(name: "catena_puts_total", labels: ["role": "head"], value: 1027),
            .init(name: "catena_puts_total", labels: ["role": "tail"], value: 3, timestamp: 1_712_345_678_901),
        ])
        #expect(exposition.value("catena_puts_total", ["role": "tail"]) == 3)
        #expect(exposition.value("catena_puts_total") == nil)
        #expect(exposition.value("catena_puts_total", ["role": "middle"]) == nil)

        #expect(exposition.family("catena_temperature")?.type == .gauge)
        #expect(exposition.family("catena_temperature")?.help == nil)
        #expect(exposition.value("catena_temperature", ["path": "C:\\data\\x \"1\"\nnext", "node": "n1"]) == -0.0015)
        #expect(exposition.value("catena_temperature") == .infinity)
        #expect(exposition.value("catena_temperature", ["node": "n2"])?.isNaN == true)
        #expect(exposition.value("catena_temperature", ["node": "n3"]) == -.infinity)
        #expect(exposition.family("untyped_thing")?.type == .untyped)
        #expect(exposition.value("untyped_thing") == 42)

        let latency = try #require(exposition.family("catena_put_seconds"))
        #expect(latency.type == .histogram && latency.help == "Put latency." && latency.samples.count == 10)
        #expect(exposition.value("catena_put_seconds_bucket", ["role": "head", "le": "0.1"]) == 3)
        #expect(exposition.value("catena_put_seconds_count", ["role": "head"]) == 4)
        let head = try #require(exposition.histogram("catena_put_seconds", ["role": "head"]))
        #expect(head.buckets.map(\.upperBound) == [0.005, 0.1, .infinity])
        #expect(head.buckets.map(\.cumulativeCount) == [1, 3, 4])
        #expect(head.sum == 1.25 && head.count == 4)
        #expect(exposition.histogram("catena_put_seconds", ["role": "tail"])?.count == 0)
        #expect(exposition.histogram("catena_put_seconds") == nil)
        #expect(exposition.histogram("catena_temperature") == nil)

        #expect(exposition.family("catena_rpc_seconds")?.type == .summary)
        #expect(exposition.value("catena_rpc_seconds", ["quantile": "0.5"]) == 0.01)
        #expect(exposition.value("catena_rpc_seconds_count") == 20)

        let onlyHelp = try #require(exposition.family("only_help"))
        #expect(onlyHelp.samples.isEmpty && onlyHelp.type == .untyped && onlyHelp.help == "Described, never sampled.")
    }

    /// What swift-prometheus 2.4.1's `PrometheusCollectorRegistry.emitToString()` printed for a
    /// registry of two labelled counters (with help), a float counter and a gauge made without help
    /// (as its swift-metrics factory makes them), a gauge with help, a duration histogram with the
    /// factory's default buckets and a value histogram: `# HELP` only where there is help text,
    /// counters as integers, gauges as `Double.description`, bucket bounds as `Duration` and
    /// `Double` print them, the series' labels before `le`. Families come in dictionary order.
    static let swiftPrometheusOutput = #"""
        # TYPE catena_put_value_bytes histogram
        catena_put_value_bytes_bucket{le="5.0"} 3
        catena_put_value_bytes_bucket{le="10.0"} 3
        catena_put_value_bytes_bucket{le="25.0"} 3
        catena_put_value_bytes_bucket{le="50.0"} 3
        catena_put_value_bytes_bucket{le="100.0"} 4
        catena_put_value_bytes_bucket{le="250.0"} 4
        catena_put_value_bytes_bucket{le="500.0"} 4
        catena_put_value_bytes_bucket{le="1000.0"} 4
        catena_put_value_bytes_bucket{le="2500.0"} 4
        catena_put_value_bytes_bucket{le="5000.0"} 5
        catena_put_value_bytes_bucket{le="10000.0"} 6
        catena_put_value_bytes_bucket{le="+Inf"} 7
        catena_put_value_bytes_sum 32396.0
        catena_put_value_bytes_count 7
        # HELP catena_chain_length Nodes in the chain, as the master last announced it (see C:\\docs).
        # TYPE catena_chain_length gauge
        catena_chain_length 3.0
        # TYPE catena_log_segment_bytes gauge
        catena_log_segment_bytes{node="n1",path="C:\\data\\seg \"0\"\nnext"} 16777216.0
        # TYPE catena_replicated_seconds_total counter
        catena_replicated_seconds_total 12.75
        # HELP catena_put_requests_total Puts received from clients.
        # TYPE catena_put_requests_total counter
        catena_put_requests_total{role="head"} 1027
        catena_put_requests_total{role="tail"} 0
        # HELP catena_put_duration_seconds Time from a put's arrival at the head to its ack.
        # TYPE catena_put_duration_seconds histogram
        catena_put_duration_seconds_bucket{role="head",le="0.005"} 5
        catena_put_duration_seconds_bucket{role="head",le="0.01"} 7
        catena_put_duration_seconds_bucket{role="head",le="0.025"} 8
        catena_put_duration_seconds_bucket{role="head",le="0.05"} 9
        catena_put_duration_seconds_bucket{role="head",le="0.1"} 10
        catena_put_duration_seconds_bucket{role="head",le="0.25"} 10
        catena_put_duration_seconds_bucket{role="head",le="0.5"} 11
        catena_put_duration_seconds_bucket{role="head",le="1.0"} 11
        catena_put_duration_seconds_bucket{role="head",le="2.5"} 12
        catena_put_duration_seconds_bucket{role="head",le="5.0"} 12
        catena_put_duration_seconds_bucket{role="head",le="10.0"} 12
        catena_put_duration_seconds_bucket{role="head",le="+Inf"} 12
        catena_put_duration_seconds_sum{role="head"} 1.640001476
        catena_put_duration_seconds_count{role="head"} 12

        """#

    /// swift-prometheus 2.4.1's output parses, from a String and as bytes, and reads back as written.
    @Test func parsesSwiftPrometheusOutput() throws {
        let exposition = try PrometheusExposition(parsing: Self.swiftPrometheusOutput)
        let fromBytes = try PrometheusExposition(parsingUTF8: Array(Self.swiftPrometheusOutput.utf8))
        #expect(fromBytes.families.keys.sorted() == exposition.families.keys.sorted())
        #expect(exposition.families.count == 6)

        let duration = try #require(exposition.histogram("catena_put_duration_seconds", ["role": "head"]))
        #expect(duration.buckets.map(\.upperBound) == [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, .infinity])
        #expect(duration.buckets.last?.cumulativeCount == 12 && duration.count == 12 && duration.sum == 1.640001476)
        let sizes = try #require(exposition.histogram("catena_put_value_bytes"))
        #expect(sizes.buckets.count == 12 && sizes.count == 7 && sizes.sum == 32396)
        #expect(exposition.family("catena_put_value_bytes")?.help == nil)

        #expect(exposition.family("catena_chain_length")?.help == #"Nodes in the chain, as the master last announced it (see C:\docs)."#)
        #expect(exposition.value("catena_chain_length") == 3)
        #expect(exposition.value("catena_log_segment_bytes", ["node": "n1", "path": "C:\\data\\seg \"0\"\nnext"]) == 16_777_216)
        #expect(exposition.value("catena_replicated_seconds_total") == 12.75)
        #expect(exposition.family("catena_put_requests_total")?.type == .counter)
        #expect(exposition.value("catena_put_requests_total", ["role": "tail"]) == 0)

        // Only the help text its swift-metrics path leaves out departs from the conventions.
        #expect(exposition.conventionProblems(prefix: "catena_") == [
            "catena_log_segment_bytes: has no HELP text",
            "catena_put_value_bytes: has no HELP text",
            "catena_replicated_seconds_total: has no HELP text",
        ])
    }

    /// Each rule of the format, broken once: the parser throws, naming the rule and the line.
    @Test(arguments: brokenRules)
    func rejects(_ broken: BrokenRule) {
        let error = #expect(throws: PrometheusExposition.ParseError.self) {
            try PrometheusExposition(parsing: broken.text)
        }
        #expect(error?.code == broken.code, "\(error.map(String.init(describing:)) ?? "no error")")
        #expect(error?.line == broken.line, "\(error.map(String.init(describing:)) ?? "no error")")
    }

    /// Every rule has a case above.
    @Test func everyCodeIsExercised() {
        typealias Code = PrometheusExposition.ParseError.Code
        let codes: Set<Code> = [
            .lineEnding, .syntax, .invalidEscape, .invalidMetricName, .invalidLabelName, .reservedLabelName,
            .duplicateLabelName, .invalidValue, .invalidTimestamp, .unknownType, .duplicateHelp, .duplicateType,
            .typeAfterSamples, .splitFamily, .duplicateSeries, .negativeCounter, .misplacedSample, .invalidBound,
            .boundsOutOfOrder, .bucketsNotCumulative, .invalidCount, .missingInfBucket, .infBucketMismatch,
            .missingSumOrCount,
        ]
        #expect(Set(brokenRules.map(\.code)) == codes)
    }

    /// The error names its line, the line's text and what is wrong.
    @Test func errorDescribesTheLine() {
        let error = #expect(throws: PrometheusExposition.ParseError.self) {
            try PrometheusExposition(parsing: lines("ok 1", #"bad{x="1",x="2"} 1"#))
        }
        #expect(error?.line == 2)
        #expect(error?.text == #"bad{x="1",x="2"} 1"#)
        #expect(error?.description == #"line 2: label x appears twice (duplicateLabelName): bad{x="1",x="2"} 1"#)
    }

    /// Values as Go's ParseFloat reads them, which is what Prometheus accepts.
    @Test(arguments: [
        ("0", 0.0), ("-0", -0.0), ("+3", 3), ("1.5", 1.5), ("5.", 5), (".5", 0.5), ("1e3", 1000), ("1E-3", 0.001),
        ("-2.5e+2", -250), ("1e-400", 0), ("+Inf", .infinity), ("-Inf", -.infinity), ("inf", .infinity),
        ("Infinity", .infinity), ("-infinity", -.infinity), ("16777216.0", 16_777_216), ("1.5e-05", 0.000015),
    ])
    func readsFloats(_ text: String, _ expected: Double) throws {
        let exposition = try PrometheusExposition(parsing: lines("a \(text)"))
        let value = try #require(exposition.value("a"))
        #expect(value == expected && value.sign == expected.sign)
    }

    @Test(arguments: ["NaN", "nan", "NAN"])
    func readsNaN(_ text: String) throws {
        #expect(try PrometheusExposition(parsing: lines("a \(text)")).value("a")?.isNaN == true)
    }

    /// Bytes that are not UTF-8 are refused at their line.
    @Test func rejectsInvalidUTF8() {
        let bytes = Array("a 1\n".utf8) + Array(#"b{x=""#.utf8) + [0xC3, 0x28] + Array(#""} 1"#.utf8) + [0x0A]
        let error = #expect(throws: PrometheusExposition.ParseError.self) {
            try PrometheusExposition(parsingUTF8: bytes)
        }
        #expect(error?.code == .invalidUTF8 && error?.line == 2)
        let valid = try? PrometheusExposition(parsingUTF8: Array("# HELP a Grüße, 😀.\na{x=\"ü€😀\"} 1\n".utf8))
        #expect(valid?.value("a", ["x": "ü€😀"]) == 1 && valid?.family("a")?.help == "Grüße, 😀.")
    }

    /// An empty text is a valid exposition without families.
    @Test func parsesEmptyText() throws {
        #expect(try PrometheusExposition(parsing: "").families.isEmpty)
        #expect(try PrometheusExposition(parsing: "\n\n# only a comment\n").families.isEmpty)
    }

    /// Naming conventions are reported, not enforced.
    @Test func reportsConventionProblems() throws {
        let text = lines(
            "# HELP catena_puts Puts.", "# TYPE catena_puts counter", "catena_puts 1",
            "# HELP catena_queue_total Queued.", "# TYPE catena_queue_total gauge", "catena_queue_total 1",
            "# HELP catena_put_latency_ms Latency.", "# TYPE catena_put_latency_ms histogram",
            #"catena_put_latency_ms_bucket{le="+Inf"} 0"#, "catena_put_latency_ms_sum 0", "catena_put_latency_ms_count 0",
            "# HELP catena_cache_kb Cache size.", "# TYPE catena_cache_kb gauge", "catena_cache_kb 1",
            "# HELP process_cpu_seconds_total CPU time.", "# TYPE process_cpu_seconds_total counter", "process_cpu_seconds_total 1",
            "# HELP catena_get_duration Get latency.", "# TYPE catena_get_duration summary", "catena_get_duration_sum 0",
            "catena_get_duration_count 0",
            "catena_mystery 1",
            "# HELP catena_fine_seconds Fine.", "# TYPE catena_fine_seconds histogram",
            #"catena_fine_seconds_bucket{le="+Inf"} 0"#, "catena_fine_seconds_sum 0", "catena_fine_seconds_count 0"
        )
        let exposition = try PrometheusExposition(parsing: text)
        #expect(exposition.conventionProblems() == [
            "catena_cache_kb: kb is not a base unit; use bytes",
            "catena_get_duration: a summary of time should be in seconds and end in _seconds",
            "catena_mystery: has no HELP text",
            "catena_mystery: is untyped",
            "catena_put_latency_ms: ms is not a base unit; use seconds",
            "catena_put_latency_ms: a histogram of time should be in seconds and end in _seconds",
            "catena_puts: a counter's name should end in _total",
            "catena_queue_total: _total is for counters, and this is a gauge",
        ])
        #expect(exposition.conventionProblems(prefix: "catena_").filter { $0.hasPrefix("process_") } == [
            "process_cpu_seconds_total: does not start with catena_",
        ])
    }
}
