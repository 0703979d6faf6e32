import CatenaStorage

extension StorageBenchmark {
    /// The throughput goals the store is held to.
    public enum Goals {
        /// 1 MiB values: store MB/s at least this fraction of the raw disk's (fsync at the end).
        public static let largeValueRatio = 0.8
        /// The value size the ratio goal applies to.
        public static let largeValueSize = 1 << 20
        /// 4 KiB values: at least this many durable puts per second.
        public static let smallValuePutsPerSecond = 30_000.0
        /// The value size the puts/s goal applies to.
        public static let smallValueSize = 4 << 10
    }

    /// The median, smallest and largest of a set of per-round figures.
    public struct Spread: Codable, Hashable, Sendable {
        /// The middle value; for an even count, the mean of the two middle values.
        public var median: Double
        /// The smallest value.
        public var min: Double
        /// The largest value.
        public var max: Double

        /// The spread of `values`; nil when there are none.
        public init?(_ values: [Double]) {
            guard !values.isEmpty else { return nil }
            let sorted = values.sorted()
            let mid = sorted.count / 2
            median = sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
            min = sorted[0]
            max = sorted[sorted.count - 1]
        }

        /// `median (min-max)`, each formatted by `format`.
        func text(_ format: (Double) -> String) -> String {
            "\(format(median)) (\(format(min))-\(format(max)))"
        }

        var json: String { "{\"median\":\(jsonNumber(median)),\"min\":\(jsonNumber(min)),\"max\":\(jsonNumber(max))}" }
    }

    /// What one round of one value size measured: the store and the raw disk, back to back.
    public struct RoundResult: Sendable {
        /// 1, 2, ...
        public var round: Int
        /// Whether the store ran before the raw disk (odd rounds) or after it (even rounds).
        public var storeFirst: Bool
        /// Value bytes per record.
        public var valueSize: Int
        /// Records appended (one per append call).
        public var records: Int
        /// From the first append to the last one becoming durable.
        public var elapsed: Duration
        /// Per-append latency in this round: from taking the LSN to the ticket's `durable()` returning.
        public var latency: LatencySummary
        /// The store's counters for the round.
        public var metrics: StoreMetrics
        /// The raw disk writing the same bytes, fsync at the end only.
        public var rawEndSync: RawDiskBenchmark.Result?
        /// The raw disk writing the same bytes, fsync every ``Report/rawSyncInterval`` bytes.
        public var rawPeriodicSync: RawDiskBenchmark.Result?
        /// The whole round, settles, store set-up and removal included.
        public var wallTime: Duration
        /// Time spent in the `sync()` settles before the round's phases.
        public var settleTime: Duration

        /// Durable puts per second.
        public var putsPerSecond: Double { Double(records) / elapsed.seconds }
        /// Record bytes written to the log (header, key, value, checksum), in MB (10^6 bytes) per second.
        public var megabytesPerSecond: Double { Double(metrics.appendedBytes) / 1e6 / elapsed.seconds }
        /// Records per fsync (segment and directory syncs): how well group commit shares them.
        public var recordsPerSync: Double? { metrics.syncs > 0 ? Double(metrics.appendedRecords) / Double(metrics.syncs) : nil }
        /// Records per group commit (write round).
        public var recordsPerBatch: Double? { metrics.batches > 0 ? Double(metrics.appendedRecords) / Double(metrics.batches) : nil }
        /// Store MB/s divided by this round's raw MB/s with one fsync at the end.
        public var ratio: Double? { rawEndSync.map { megabytesPerSecond / $0.megabytesPerSecond } }
        /// Store MB/s divided by this round's raw MB/s with periodic fsyncs.
        public var ratioToPeriodic: Double? { rawPeriodicSync.map { megabytesPerSecond / $0.megabytesPerSecond } }

        /// One line for progress output.
        func progressLine(of rounds: Int) -> String {
            var line = "\(sizeName(valueSize)) round \(round)/\(rounds) (\(storeFirst ? "store" : "raw disk") first): "
                + "store \(grouped(Int(putsPerSecond.rounded()))) puts/s, \(fixed(megabytesPerSecond, 1)) MB/s"
            if let e = rawEndSync, let p = rawPeriodicSync, let ratio {
                line += "; raw \(fixed(e.megabytesPerSecond, 1)) MB/s (end fsync), \(fixed(p.megabytesPerSecond, 1)) MB/s (periodic fsyncs); ratio \(fixed(ratio, 2))"
            }
            return line + "; round took \(fixed(wallTime.seconds, 1)) s"
        }
    }

    /// What one value size measured over all its rounds.
    public struct SizeResult: Sendable {
        /// Value bytes per record.
        public var valueSize: Int
        /// The rounds, in the order run.
        public var rounds: [RoundResult]
        /// Per-append latency over all rounds' samples pooled.
        public var latency: LatencySummary

        /// A result from its rounds (at least one) and the latency of all their samples.
        public init(valueSize: Int, rounds: [RoundResult], pooledLatency: LatencySummary) {
            precondition(!rounds.isEmpty)
            self.valueSize = valueSize
            self.rounds = rounds
            self.latency = pooledLatency
        }

        /// Records appended per round.
        public var records: Int { rounds[0].records }
        /// Durable puts per second, over the rounds.
        public var putsPerSecond: Spread { Spread(rounds.map(\.putsPerSecond))! }
        /// Store MB/s, over the rounds.
        public var megabytesPerSecond: Spread { Spread(rounds.map(\.megabytesPerSecond))! }
        /// Raw MB/s with one fsync at the end, over the rounds; nil if not measured.
        public var rawEndSync: Spread? { Spread(rounds.compactMap { $0.rawEndSync?.megabytesPerSecond }) }
        /// Raw MB/s with periodic fsyncs, over the rounds; nil if not measured.
        public var rawPeriodicSync: Spread? { Spread(rounds.compactMap { $0.rawPeriodicSync?.megabytesPerSecond }) }
        /// The per-round ratios (store MB/s / raw end-fsync MB/s of the same round); nil if not measured.
        public var ratio: Spread? { Spread(rounds.compactMap(\.ratio)) }
        /// The per-round ratios to the periodic-fsync raw run; nil if not measured.
        public var ratioToPeriodic: Spread? { Spread(rounds.compactMap(\.ratioToPeriodic)) }
        /// Records per fsync, over the rounds; nil without fsyncs.
        public var recordsPerSync: Spread? { Spread(rounds.compactMap(\.recordsPerSync)) }
        /// Records per group commit, over the rounds.
        public var recordsPerBatch: Spread? { Spread(rounds.compactMap(\.recordsPerBatch)) }
    }

    /// The outcome of a run.
    public struct Report: Sendable {
        /// The store's durability setting.
        public var durability: Durability
        /// Concurrent appenders.
        public var concurrency: Int
        /// Where records were encoded.
        public var encoding: Encoding
        /// The store's group-commit size in effect.
        public var groupCommitMaxBytes: Int
        /// The store's group-commit delay in effect.
        public var groupCommitDelay: Duration
        /// The fsync interval of the periodic raw run.
        public var rawSyncInterval: Int
        /// Rounds per value size.
        public var repetitions: Int
        /// The whole run, settles included.
        public var elapsed: Duration
        /// One entry per value size, in the order run.
        public var results: [SizeResult]

        /// The goals, checked against the medians of ``results``; a goal whose value size (or,
        /// for the ratio, the raw disk) was not part of the run is not measured (`met` nil).
        public var goals: [BenchmarkGoal] {
            var checks: [BenchmarkGoal] = []
            let rounds = "\(repetitions) round\(repetitions == 1 ? "" : "s")"
            let large = results.first { $0.valueSize == Goals.largeValueSize }
            let ratioGoal = "1 MiB: store MB/s >= \(Int(Goals.largeValueRatio * 100))% of raw (fsync at end), median of per-round ratios"
            if let large, let ratio = large.ratio {
                let percent = { (x: Double) in fixed(x * 100, 1) + "%" }
                checks.append(BenchmarkGoal(
                    goal: ratioGoal, measured: "median \(percent(ratio.median)) over \(rounds), range \(percent(ratio.min))-\(percent(ratio.max))",
                    comparison: .atLeast, threshold: Goals.largeValueRatio, unit: "ratio", value: ratio.median))
            } else {
                checks.append(BenchmarkGoal(goal: ratioGoal, measured: "1 MiB values with the raw disk were not part of this run",
                                            comparison: .atLeast, threshold: Goals.largeValueRatio, unit: "ratio", value: nil))
            }
            let small = results.first { $0.valueSize == Goals.smallValueSize }
            let putsGoal = "4 KiB: >= \(grouped(Int(Goals.smallValuePutsPerSecond))) puts/s, median of rounds"
            if let small {
                let puts = small.putsPerSecond
                let n = { (x: Double) in grouped(Int(x.rounded())) }
                checks.append(BenchmarkGoal(
                    goal: putsGoal, measured: "median \(n(puts.median)) puts/s over \(rounds), range \(n(puts.min))-\(n(puts.max))",
                    comparison: .atLeast, threshold: Goals.smallValuePutsPerSecond, unit: "puts/s", value: puts.median))
            } else {
                checks.append(BenchmarkGoal(goal: putsGoal, measured: "4 KiB values were not part of this run",
                                            comparison: .atLeast, threshold: Goals.smallValuePutsPerSecond, unit: "puts/s", value: nil))
            }
            return checks
        }

        /// Plain-text tables: throughput per value size (median and range of the rounds),
        /// latency and group commit per value size, every round; then the settings and the goals.
        public func table() -> String {
            let rounds = "\(repetitions) round\(repetitions == 1 ? "" : "s")"
            let periodic = "(\(sizeName(rawSyncInterval)) fsyncs)"
            let mbps = { (x: Double) in fixed(x, 0) }
            let puts = { (x: Double) in grouped(Int(x.rounded())) }
            let ratio2 = { (x: Double) in fixed(x, 2) }
            var lines: [String] = []

            lines.append("Throughput, median (min-max) of \(rounds); ratio = store MB/s / raw MB/s (end fsync) of the same round:")
            var summary: [[String]] = [
                ["value", "puts/s", "MB/s", "raw MB/s", "raw MB/s", "ratio"],
                ["size", "", "", "(end fsync)", periodic, ""],
            ]
            for r in results {
                summary.append([
                    sizeName(r.valueSize), r.putsPerSecond.text(puts), r.megabytesPerSecond.text(mbps),
                    r.rawEndSync?.text(mbps) ?? "-", r.rawPeriodicSync?.text(mbps) ?? "-", r.ratio?.text(ratio2) ?? "-",
                ])
            }
            lines += aligned(summary, headerRows: 2)

            lines.append("")
            lines.append("Latency per append, all rounds' samples pooled; rec/fsync and rec/batch: median of rounds:")
            var latency: [[String]] = [
                ["value", "records", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "rec/fsync", "rec/batch"],
            ]
            for r in results {
                let l = r.latency
                latency.append([
                    sizeName(r.valueSize), "\(grouped(r.records)) x \(r.rounds.count)",
                    millis(l.p50), millis(l.p90), millis(l.p99), millis(l.p999), millis(l.max),
                    r.recordsPerSync.map { fixed($0.median, 1) } ?? "-", r.recordsPerBatch.map { fixed($0.median, 1) } ?? "-",
                ])
            }
            lines += aligned(latency, headerRows: 1)

            lines.append("")
            lines.append("Rounds:")
            var perRound: [[String]] = [
                ["value", "round", "first", "puts/s", "MB/s", "p50 ms", "p99 ms", "rec/fsync", "raw MB/s", "raw MB/s", "ratio"],
                ["size", "", "", "", "", "", "", "", "(end fsync)", periodic, ""],
            ]
            for r in results {
                for x in r.rounds {
                    perRound.append([
                        sizeName(x.valueSize), "\(x.round)", x.storeFirst ? "store" : "raw",
                        puts(x.putsPerSecond), fixed(x.megabytesPerSecond, 1),
                        millis(x.latency.p50), millis(x.latency.p99), x.recordsPerSync.map { fixed($0, 1) } ?? "-",
                        x.rawEndSync.map { fixed($0.megabytesPerSecond, 1) } ?? "-",
                        x.rawPeriodicSync.map { fixed($0.megabytesPerSecond, 1) } ?? "-",
                        x.ratio.map(ratio2) ?? "-",
                    ])
                }
            }
            lines += aligned(perRound, headerRows: 2)

            let delayMicros = groupCommitDelay.nanosecondsValue / 1000
            lines.append("")
            lines.append("durability \(durability.rawValue), \(concurrency) appenders, encoding \(encoding.rawValue), group commit <= \(sizeName(groupCommitMaxBytes)) / delay \(delayMicros) us; MB = 10^6 bytes of records (header+key+value+checksum); total time \(fixed(elapsed.seconds, 1)) s")
            for g in goals {
                let verdict = g.met.map { $0 ? "MET" : "MISSED" } ?? "NOT MEASURED"
                lines.append("goal: \(g.goal): \(verdict) (\(g.measured))")
            }
            let shortest = results.flatMap(\.rounds).map(\.elapsed).min()
            if let shortest, shortest < .milliseconds(300) {
                lines.append("note: a store phase lasted only \(fixed(shortest.seconds, 2)) s; phases this short mostly measure the page cache, not the disk. Judge the goals with the default volumes.")
            }
            return lines.joined(separator: "\n")
        }

        /// The report as one JSON object (no Foundation needed; numbers and plain strings only):
        /// the settings, per value size the summary over the rounds and every round, the goals
        /// (each with the keys of ``BenchmarkGoal``: `met` null when not measured).
        public func json() -> String {
            func spread(_ s: Spread?) -> String { s?.json ?? "null" }
            func raw(_ r: RawDiskBenchmark.Result?) -> String {
                guard let r else { return "null" }
                return "{\"bytes\":\(r.bytes),\"seconds\":\(jsonNumber(r.elapsed.seconds)),\"syncs\":\(r.syncs),\"mbPerSecond\":\(jsonNumber(r.megabytesPerSecond))}"
            }
            func latency(_ l: LatencySummary) -> String {
                "{\"count\":\(l.count),\"p50\":\(l.p50),\"p90\":\(l.p90),\"p99\":\(l.p99),\"p999\":\(l.p999),\"max\":\(l.max),\"mean\":\(l.mean)}"
            }
            let sizes = results.map { r in
                let rounds = r.rounds.map { x in
                    let m = x.metrics
                    return "{\"round\":\(x.round),\"storeFirst\":\(x.storeFirst),\"records\":\(x.records),\"seconds\":\(jsonNumber(x.elapsed.seconds)),"
                        + "\"putsPerSecond\":\(jsonNumber(x.putsPerSecond)),\"mbPerSecond\":\(jsonNumber(x.megabytesPerSecond)),"
                        + "\"latencyNanoseconds\":\(latency(x.latency)),"
                        + "\"store\":{\"appendedRecords\":\(m.appendedRecords),\"appendedBytes\":\(m.appendedBytes),\"appendCalls\":\(m.appendCalls),\"batches\":\(m.batches),\"syncs\":\(m.syncs),\"segmentsSealed\":\(m.segmentsSealed)},"
                        + "\"recordsPerSync\":\(jsonNumber(x.recordsPerSync)),\"recordsPerBatch\":\(jsonNumber(x.recordsPerBatch)),"
                        + "\"rawEndSync\":\(raw(x.rawEndSync)),\"rawPeriodicSync\":\(raw(x.rawPeriodicSync)),"
                        + "\"ratio\":\(jsonNumber(x.ratio)),\"ratioToPeriodic\":\(jsonNumber(x.ratioToPeriodic)),"
                        + "\"wallSeconds\":\(jsonNumber(x.wallTime.seconds)),\"settleSeconds\":\(jsonNumber(x.settleTime.seconds))}"
                }
                return "{\"valueSize\":\(r.valueSize),\"records\":\(r.records),\"rounds\":[\(rounds.joined(separator: ","))],"
                    + "\"putsPerSecond\":\(spread(r.putsPerSecond)),\"mbPerSecond\":\(spread(r.megabytesPerSecond)),"
                    + "\"latencyNanoseconds\":\(latency(r.latency)),\"latencySamples\":\"pooled over rounds\","
                    + "\"recordsPerSync\":\(spread(r.recordsPerSync)),\"recordsPerBatch\":\(spread(r.recordsPerBatch)),"
                    + "\"rawEndSyncMbPerSecond\":\(spread(r.rawEndSync)),\"rawPeriodicSyncMbPerSecond\":\(spread(r.rawPeriodicSync)),"
                    + "\"ratio\":\(spread(r.ratio)),\"ratioToPeriodic\":\(spread(r.ratioToPeriodic))}"
            }
            let goalList = goals.map { g in
                "{\"goal\":\(jsonString(g.goal)),\"measured\":\(jsonString(g.measured)),\"met\":\(g.met.map { "\($0)" } ?? "null"),"
                    + "\"comparison\":\(jsonString(g.comparison.rawValue)),\"threshold\":\(jsonNumber(g.threshold)),"
                    + "\"unit\":\(jsonString(g.unit)),\"value\":\(jsonNumber(g.value))}"
            }
            return "{\"durability\":\"\(durability.rawValue)\",\"concurrency\":\(concurrency),\"encoding\":\"\(encoding.rawValue)\","
                + "\"groupCommitMaxBytes\":\(groupCommitMaxBytes),\"groupCommitDelayNanoseconds\":\(groupCommitDelay.nanosecondsValue),"
                + "\"rawSyncInterval\":\(rawSyncInterval),\"repetitions\":\(repetitions),\"seconds\":\(jsonNumber(elapsed.seconds)),"
                + "\"results\":[\(sizes.joined(separator: ","))],\"goals\":[\(goalList.joined(separator: ","))]}"
        }
    }
}

/// `rows` as aligned lines: the first column left-aligned, the others right-aligned, a rule of
/// dashes after the first `headerRows` rows.
func aligned(_ rows: [[String]], headerRows: Int) -> [String] {
    let columns = rows.map(\.count).max() ?? 0
    var widths = [Int](repeating: 0, count: columns)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    var lines: [String] = []
    for (n, row) in rows.enumerated() {
        var cells: [String] = []
        for (i, cell) in row.enumerated() {
            let pad = String(repeating: " ", count: widths[i] - cell.count)
            cells.append(i == 0 ? cell + pad : pad + cell)
        }
        lines.append(String(cells.joined(separator: "  ").reversed().drop { $0 == " " }.reversed()))
        if n == headerRows - 1 { lines.append(String(repeating: "-", count: lines.map(\.count).max() ?? 0)) }
    }
    return lines
}

/// A JSON number, or null for nil and non-finite values.
func jsonNumber(_ d: Double?) -> String {
    guard let d, d.isFinite else { return "null" }
    return "\(d)"
}

/// `x` with `digits` decimals, without Foundation.
func fixed(_ x: Double, _ digits: Int) -> String {
    guard x.isFinite else { return "\(x)" }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let scaled = (abs(x) * scale).rounded()
    guard scaled < 9e18 else { return "\(x)" }
    let n = Int64(scaled)
    let s = Int64(scale)
    let whole = grouped(Int(n / s), separator: "")
    var text = (x < 0 && n != 0 ? "-" : "") + whole
    if digits > 0 {
        let frac = String(n % s)
        text += "." + String(repeating: "0", count: digits - frac.count) + frac
    }
    return text
}

/// `n` with thousands separators.
func grouped(_ n: Int, separator: String = ",") -> String {
    let digits = String(n.magnitude)
    var out = ""
    for (i, ch) in digits.enumerated() {
        if i > 0 && (digits.count - i) % 3 == 0 { out += separator }
        out.append(ch)
    }
    return (n < 0 ? "-" : "") + out
}

/// Nanoseconds as milliseconds with two decimals.
func millis(_ ns: Int64) -> String { fixed(Double(ns) / 1e6, 2) }

/// A byte size as `4 KiB`, `1 MiB`, or plain bytes.
public func sizeName(_ bytes: Int) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 { return "\(bytes >> 30) GiB" }
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 { return "\(bytes >> 20) MiB" }
    if bytes >= 1 << 10 && bytes % (1 << 10) == 0 { return "\(bytes >> 10) KiB" }
    return "\(bytes) B"
}

/// Parses a byte size: a number with an optional suffix B, K/KiB, M/MiB, G/GiB (powers of 1024).
public func parseSize(_ text: String) -> Int? {
    let t = text.trimmingSpaces.lowercased()
    let digits = t.prefix { $0.isASCII && $0.isNumber }
    guard !digits.isEmpty, let n = Int(digits) else { return nil }
    let shift: Int
    switch t.dropFirst(digits.count).trimmingSpaces {
    case "", "b": shift = 0
    case "k", "kib", "kb": shift = 10
    case "m", "mib", "mb": shift = 20
    case "g", "gib", "gb": shift = 30
    default: return nil
    }
    let (v, overflow) = n.multipliedReportingOverflow(by: 1 << shift)
    return overflow ? nil : v
}

extension StringProtocol {
    var trimmingSpaces: String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}

func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\t": out += "\\t"
        default:
            if u.value < 0x20 {
                let hex = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(u)
            }
        }
    }
    return out + "\""
}
