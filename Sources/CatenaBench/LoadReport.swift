import CatenaCore
import Foundation
import Histogram

/// What `catena bench` measured: per phase (prefill, run, the final verification), per
/// operation, counts, rates, latency percentiles and errors by code; and what the verifier
/// found. Printed as a table, written as JSON (`--json`) and as HdrHistogram percentile
/// distributions (`--hgrm`).
public struct LoadReport: Encodable, Sendable {
    /// Latency percentiles of one operation, in microseconds.
    public struct Latency: Codable, Hashable, Sendable {
        public var p50: UInt64
        public var p90: UInt64
        public var p99: UInt64
        public var p999: UInt64
        public var max: UInt64
        public var mean: Double
    }

    /// One operation's figures in one phase.
    public struct OperationReport: Codable, Hashable, Sendable {
        /// Operations completed, failed ones included.
        public var count: Int
        /// Reads that found no object (counted in `count`, not errors).
        public var notFound: Int
        /// Failed operations by error code.
        public var errors: [String: Int]
        /// Operations per second over the phase.
        public var operationsPerSecond: Double
        /// Value bytes per second over the phase, in MB (10^6).
        public var megabytesPerSecond: Double
        /// Latency percentiles (µs); failed operations included.
        public var latencyMicroseconds: Latency

        /// Failed operations.
        public var errorCount: Int { errors.values.reduce(0, +) }

        init(_ stats: Recorder.Stats, seconds: Double) {
            let h = stats.histogram
            let count = stats.succeeded + stats.errors.values.reduce(0, +)
            self.count = count
            notFound = stats.notFound
            errors = stats.errors
            operationsPerSecond = seconds > 0 ? Double(count) / seconds : 0
            megabytesPerSecond = seconds > 0 ? Double(stats.bytes) / seconds / 1e6 : 0
            latencyMicroseconds = Latency(p50: h.valueAtPercentile(50), p90: h.valueAtPercentile(90), p99: h.valueAtPercentile(99),
                                          p999: h.valueAtPercentile(99.9), max: h.max, mean: h.totalCount == 0 ? 0 : h.mean)
        }
    }

    /// One phase: how long it took and each operation's figures.
    public struct Phase: Encodable, Sendable {
        /// `prefill`, `run` or `verify`.
        public var name: String
        /// Its length.
        public var seconds: Double
        /// Each operation's figures.
        public var operations: [LoadWorkload.Operation: OperationReport]
        /// Each operation's latencies (µs), for `--hgrm`.
        var histograms: [LoadWorkload.Operation: Histogram<UInt64>] = [:]
        /// Why the phase was given up before its end, if it was.
        public var abandoned: String?

        /// Operations in the phase.
        public var count: Int { operations.values.reduce(0) { $0 + $1.count } }
        /// Failed operations in the phase.
        public var errorCount: Int { operations.values.reduce(0) { $0 + $1.errorCount } }

        enum CodingKeys: String, CodingKey { case name, seconds, operations, abandoned }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(name, forKey: .name)
            try c.encode(seconds, forKey: .seconds)
            try c.encodeIfPresent(abandoned, forKey: .abandoned)
            try c.encode(Dictionary(uniqueKeysWithValues: operations.map { ($0.key.rawValue, $0.value) }), forKey: .operations)
        }
    }

    /// What `--verify` found.
    public struct Verification: Encodable, Sendable {
        /// Reads checked (the run's and the final verification's).
        public var readsChecked: Int
        /// Problems found: lost or stale acknowledged writes, foreign or damaged values, LSNs
        /// out of order.
        public var problems: Int
        /// The first problems, each naming its key.
        public var problemLines: [String]
        /// Keys written by the run and read again at the end.
        public var keysVerified: Int
        /// Keys whose final read failed or was given up (their writes are not proven).
        public var keysUnverified: Int
        /// Keys not read again because a second Ctrl-C skipped the rest of the final verification.
        public var keysSkipped: Int
    }

    /// The workload as run.
    public struct Settings: Encodable, Sendable {
        public var mix: String
        public var sizes: String
        public var keys: Int
        public var keyDistribution: String
        public var prefix: String
        public var seed: UInt64
        public var concurrency: Int
        public var rate: Double?
        public var duration: Double?
        public var operations: Int?
        public var verify: Bool
        /// The clients' read mode (``ReadMode``): which members answered the reads.
        public var readMode: String
        /// The clients' acknowledgement mode (``AckMode``): when their writes returned.
        public var ack: String
    }

    public var settings: Settings
    /// The run's stamp id (hex).
    public var run: String
    public var prefill: Phase?
    public var measured: Phase
    public var verifyPhase: Phase?
    public var verification: Verification?
    /// Whether Ctrl-C cut the run short.
    public var interrupted: Bool

    /// Whether a phase was given up because the cluster did not answer.
    public var gaveUp: Bool { [prefill?.abandoned, measured.abandoned, verifyPhase?.abandoned].contains { $0 != nil } }

    enum CodingKeys: String, CodingKey {
        case settings, run, prefill, measured = "run_phase", verifyPhase = "verify_phase", verification, interrupted
    }

    init(configuration: LoadGenerator.Configuration, readMode: ReadMode, ack: AckMode, run: UInt64, prefill: Phase?, measured: Phase, sweep: Phase?, keysWritten: Int,
         sweepSkipped: Bool, verifier: LoadVerifier?, interrupted: Bool) {
        let w = configuration.workload
        var duration: Double?, operations: Int?
        switch configuration.limit {
        case .duration(let d): duration = d.secondsValue
        case .operations(let n): operations = n
        }
        settings = Settings(mix: w.mix.description, sizes: w.sizes.description, keys: w.keys, keyDistribution: w.keyDistribution.rawValue,
                            prefix: w.prefix, seed: w.seed, concurrency: configuration.concurrency, rate: configuration.rate,
                            duration: duration, operations: operations, verify: configuration.verify, readMode: readMode.description, ack: ack.description)
        self.run = run.hex16
        self.prefill = prefill
        self.measured = measured
        verifyPhase = sweep
        self.interrupted = interrupted
        if let verifier, let sweep {
            let verified = sweep.count - sweep.errorCount
            let unattempted = keysWritten - sweep.count
            verification = Verification(readsChecked: verifier.reads, problems: verifier.problemTotal, problemLines: verifier.problemLines,
                                        keysVerified: verified, keysUnverified: sweep.errorCount + (sweepSkipped ? 0 : unattempted),
                                        keysSkipped: sweepSkipped ? unattempted : 0)
        }
    }

    /// The report as a table, for people.
    public func table() -> String {
        var lines: [String] = []
        func phaseTable(_ phase: Phase) {
            lines.append("\(phase.name): \(fixed(phase.seconds, 1)) s, \(phase.count) operations, \(phase.errorCount) errors")
            if let abandoned = phase.abandoned { lines.append("  GIVEN UP: \(abandoned)") }
            let header = ["op", "count", "ops/s", "MB/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors"]
            let widths = [8, 10, 10, 8, 8, 8, 8, 9, 9, 7]
            func row(_ cells: [String]) -> String {
                zip(cells, widths).enumerated().map { i, cw in
                    i == 0 ? cw.0.padding(toLength: cw.1, withPad: " ", startingAt: 0) : String(repeating: " ", count: max(0, cw.1 - cw.0.count)) + cw.0
                }.joined(separator: " ")
            }
            lines.append(row(header))
            for (operation, r) in phase.operations.sorted(by: { $0.key < $1.key }) {
                let l = r.latencyMicroseconds
                lines.append(row([operation.rawValue, "\(r.count)", fixed(r.operationsPerSecond, 0), fixed(r.megabytesPerSecond, 1),
                                  ms(l.p50), ms(l.p90), ms(l.p99), ms(l.p999), ms(l.max), "\(r.errorCount)"]))
            }
            for (operation, r) in phase.operations.sorted(by: { $0.key < $1.key }) {
                if r.notFound > 0 { lines.append("  \(operation.rawValue): \(r.notFound) not found") }
                if !r.errors.isEmpty {
                    lines.append("  \(operation.rawValue) errors: " + r.errors.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
                }
            }
        }
        if let prefill {
            lines.append("prefill: \(prefill.count) puts in \(fixed(prefill.seconds, 1)) s, \(prefill.errorCount) errors")
            if let abandoned = prefill.abandoned { lines.append("  GIVEN UP: \(abandoned)") }
            if let errors = prefill.operations[.put]?.errors, !errors.isEmpty {
                lines.append("  put errors: " + errors.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
            }
        }
        phaseTable(measured)
        if let verification, let verifyPhase {
            let written = verification.keysVerified + verification.keysUnverified + verification.keysSkipped
            lines.append("verify: \(verification.readsChecked) reads checked; \(verification.keysVerified) of the \(written) keys written read back "
                         + "in \(fixed(verifyPhase.seconds, 1)) s; \(verification.problems) problems"
                         + (verification.keysUnverified > 0 ? ", \(verification.keysUnverified) keys not verified (their reads failed or were given up)" : "")
                         + (verification.keysSkipped > 0 ? ", \(verification.keysSkipped) skipped (Ctrl-C)" : ""))
            if let abandoned = verifyPhase.abandoned { lines.append("  GIVEN UP: \(abandoned)") }
            for line in verification.problemLines { lines.append("  MISMATCH \(line)") }
            if verification.problems > verification.problemLines.count {
                lines.append("  ... and \(verification.problems - verification.problemLines.count) more")
            }
        }
        if interrupted { lines.append("(interrupted: the figures cover the run up to Ctrl-C)") }
        return lines.joined(separator: "\n")
    }

    /// The report as JSON.
    public func json() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return try encoder.encode(self)
    }

    /// Writes each operation's latency distribution of the measured run to
    /// `directory/OP.hgrm`, in HdrHistogram's percentile-distribution text (milliseconds),
    /// which HdrHistogram's plotter reads. Returns the paths written.
    public func writeHistograms(to directory: String) throws -> [String] {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var paths: [String] = []
        for (operation, histogram) in measured.histograms.sorted(by: { $0.key < $1.key }) {
            var text = ""
            histogram.outputPercentileDistribution(to: &text, outputValueUnitScalingRatio: 1000)
            let path = (directory as NSString).appendingPathComponent("\(operation.rawValue).hgrm")
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            paths.append(path)
        }
        return paths
    }

    private func ms(_ micros: UInt64) -> String { fixed(Double(micros) / 1000, 2) }
}
