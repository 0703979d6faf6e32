import ArgumentParser
import CatenaBench
import CatenaCore
import Foundation
import Logging

/// `catena bench-failover`: how long writes stop when a member dies, and how long it takes to rejoin.
struct BenchFailover: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-failover",
        abstract: "Measure how long writes stop when the head, a middle node or the tail of a 3-node chain is killed.",
        discussion: """
            Starts a 3-node cluster of real catena processes (this executable) on 127.0.0.1 whose \
            topology has heartbeat.interval_ms --interval-ms and heartbeat.timeout_ms --timeout-ms, \
            and runs a steady load: --clients clients each putting one --value-size value after \
            another (new keys; half random bytes, half text), with the client's attempt timeout at \
            half the failure timeout. For the head, the middle and the tail in turn: SIGKILLs the \
            node in that role and notes the instant; measures the time from it to the first \
            acknowledgement of a put invoked after it ('next write'), and the longest time between \
            consecutive acknowledgements from the last one before the kill until the restart ('write \
            gap'); after --settle-ms more of steady load, restarts the node on its data directory and \
            measures until the master lists it as a healthy member again ('rejoined'; it truncates, \
            catches up from the tail and is appended as tail), with the longest write gap from the \
            restart until --settle-ms after the rejoin; waits --settle-ms before the next role. \
            Repeats on a fresh cluster --runs times and prints each run and the medians. Goal: next \
            write and write gap below 1.5 x the failure timeout, for each role judged on the \
            medians over the runs (a run in which no write resumed misses it). Exit status 6 after \
            the report when a role misses the goal, with a last line on stderr naming it. Progress \
            goes to stderr, with the children's logs (--log-level).
            """
    )

    @Option(name: .long, help: "The master's failure timeout (heartbeat.timeout_ms), in ms.") var timeoutMs: Int = 1000
    @Option(name: .long, help: "The nodes' heartbeat interval (heartbeat.interval_ms), in ms.") var intervalMs: Int = 100
    @Option(name: .long, help: "Concurrent clients.") var clients: Int = 16
    @Option(name: .long, help: "Value size (e.g. 4KiB).") var valueSize: String = "4KiB"
    @Option(name: .long, help: "Runs, each on a fresh cluster (1 ... 20).") var runs: Int = 3
    @Option(name: .long, help: "Steady load before the first kill, after writes resume and after a rejoin, in ms.") var settleMs: Int = 1000
    @Option(name: .long, help: "Where the clusters keep their data (default: a temporary directory, removed afterwards).") var dir: String?
    @Option(name: .long, help: "The children's log level (to stderr).") var logLevel: String = "warning"
    @Option(name: .long, help: "Also write the report, goals included, as JSON to this file.") var json: String?

    func validate() throws {
        do {
            try benchmarkConfiguration(directory: "").validate()
        } catch let error as CatenaError {
            throw ValidationError(error.message)
        }
        try validateBenchOptions(dir: dir, logLevel: logLevel)
        try validateJSONPath(json)
    }

    func benchmarkConfiguration(directory: String) throws -> FailoverBenchmark.Configuration {
        var c = FailoverBenchmark.Configuration(executable: currentExecutable(), directory: directory)
        c.failureTimeout = .milliseconds(timeoutMs)
        c.heartbeatInterval = .milliseconds(intervalMs)
        c.clients = clients
        guard let size = parseSize(valueSize) else { throw ValidationError("--value-size: cannot read '\(valueSize)'") }
        c.valueSize = size
        c.runs = runs
        c.settle = .milliseconds(settleMs)
        c.logLevel = logLevel
        c.progress = { writeStandardError($0) }
        return c
    }

    func run() async throws {
        let base = try dir ?? ScratchSpace.makeTemporaryDirectory(prefix: "catena-bench-failover")
        defer { if dir == nil { try? ScratchSpace.removeTree(base) } }
        let c = try benchmarkConfiguration(directory: base)
        print("catena bench-failover: 3 nodes, \(c.clients) clients, \(sizeName(c.valueSize)) puts, failure timeout \(timeoutMs) ms, "
              + "heartbeat \(intervalMs) ms, client attempt timeout \(timeoutMs / 2) ms, \(runs) run\(runs == 1 ? "" : "s"), "
              + "\(ProcessInfo.processInfo.activeProcessorCount) cores")
        let report = try await FailoverBenchmark(c).run()
        print(report.table(), terminator: "")
        let full = FailoverBenchmarkReport(report, configuration: c, cores: ProcessInfo.processInfo.activeProcessorCount)
        if let json { try writeBenchmarkJSON(full, to: json) }
        try exitIfGoalsMissed("bench-failover", full.goals)
    }
}

/// `catena bench-join`: a new node's catch-up rate under load, with and without LZ4.
struct BenchJoin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-join",
        abstract: "Measure how fast a node added to a loaded 3-node chain copies the log, and what it costs the writers.",
        discussion: """
            For each of --compression (default lz4, then none): starts a 3-node cluster of real \
            catena processes (this executable) on 127.0.0.1 and fills it with --mib MiB of \
            --value-size values, each half pseudo-random bytes and half repeated text (about 2:1 \
            for LZ4), from --clients clients. Then the same clients put such values one after \
            another (new keys) until the end; their throughput over --baseline-seconds is the \
            baseline. Starts a 4th node (catena node --id n4 --catch-up-compression C, not in the \
            topology) and, once it listens, adds it with ChainAdmin.addNode (catena chain \
            add-node). From the add until the master lists n4 as a member (the tail), polls the \
            master's status and n4's data directory every 100 ms. Copy rate = bytes in n4's data \
            directory when it joined / time from the add to then (MB = 10^6 bytes, the log as \
            stored: headers and checksums included); foreground ratio = client MB/s over that \
            interval / baseline. Goals: copy >= 300 MB/s, foreground >= 50% of the baseline, for \
            each compression measured. Gives up on a node that has not joined after \
            --join-timeout-seconds (reported as such; its copy goal is missed). Exit status 6 after \
            the report when a goal is missed, with a last line on stderr naming it. Progress goes \
            to stderr, with the children's logs (--log-level).
            """
    )

    @Option(name: .long, help: "MiB of values written before the baseline.") var mib: Int = 1024
    @Option(name: .long, help: "Value size (e.g. 64KiB).") var valueSize: String = "64KiB"
    @Option(name: .long, help: "Concurrent clients.") var clients: Int = 16
    @Option(name: .long, help: "Seconds of foreground load measured before the add.") var baselineSeconds: Double = 5
    @Option(name: .long, help: "Give up on a node that has not joined after this many seconds.") var joinTimeoutSeconds: Double = 300
    @Option(name: .long, help: "Comma-separated catch-up compressions to measure, each on a fresh cluster: lz4, none.")
    var compression: String = "lz4,none"
    @Option(name: .long, help: "The new node's catch-up bound in MB/s (catena node --catch-up-rate); 0: none.") var catchUpRate: Int = 300
    @Option(name: .long, help: "Where the clusters keep their data (default: a temporary directory, removed afterwards).") var dir: String?
    @Option(name: .long, help: "The children's log level (to stderr).") var logLevel: String = "warning"
    @Option(name: .long, help: "Also write the report, goals included, as JSON to this file.") var json: String?

    func validate() throws {
        guard (1...(64 << 10)).contains(mib) else { throw ValidationError("--mib must be 1 ... 65536, not \(mib)") }
        guard catchUpRate >= 0 else { throw ValidationError("--catch-up-rate must be 0 (no bound) or a positive number of MB/s") }
        guard (0...1e6).contains(baselineSeconds), (0...1e6).contains(joinTimeoutSeconds) else {
            throw ValidationError("--baseline-seconds and --join-timeout-seconds must be numbers of seconds, 0 ... 1000000")
        }
        do {
            try benchmarkConfiguration(directory: "").validate()
        } catch let error as CatenaError {
            throw ValidationError(error.message)
        }
        try validateBenchOptions(dir: dir, logLevel: logLevel)
        try validateJSONPath(json)
    }

    func benchmarkConfiguration(directory: String) throws -> JoinBenchmark.Configuration {
        var c = JoinBenchmark.Configuration(executable: currentExecutable(), directory: directory)
        c.fillBytes = mib << 20
        guard let size = parseSize(valueSize) else { throw ValidationError("--value-size: cannot read '\(valueSize)'") }
        c.valueSize = size
        c.clients = clients
        c.catchUpRate = catchUpRate
        c.baseline = .milliseconds(Int((baselineSeconds * 1000).rounded()))
        c.joinTimeout = .milliseconds(Int((joinTimeoutSeconds * 1000).rounded()))
        c.compressions = try compression.split(separator: ",", omittingEmptySubsequences: false).map { name in
            guard let mode = JoinBenchmark.Compression(rawValue: name.trimmingCharacters(in: .whitespaces)) else {
                throw ValidationError("--compression: '\(name)' is not lz4 or none")
            }
            return mode
        }
        c.logLevel = logLevel
        c.progress = { writeStandardError($0) }
        return c
    }

    func run() async throws {
        let base = try dir ?? ScratchSpace.makeTemporaryDirectory(prefix: "catena-bench-join")
        defer { if dir == nil { try? ScratchSpace.removeTree(base) } }
        let c = try benchmarkConfiguration(directory: base)
        print("catena bench-join: 3 nodes + 1 joining, \(c.clients) clients, \(sizeName(c.valueSize)) values (half random, half text), "
              + "fill \(sizeName(c.fillBytes)), baseline \(fixed1(baselineSeconds)) s, \(ProcessInfo.processInfo.activeProcessorCount) cores")
        let report = try await JoinBenchmark(c).run()
        print(report.table(), terminator: "")
        let full = JoinBenchmarkReport(report, configuration: c, cores: ProcessInfo.processInfo.activeProcessorCount)
        if let json { try writeBenchmarkJSON(full, to: json) }
        try exitIfGoalsMissed("bench-join", full.goals)
    }
}

/// The running executable: the benchmarks start their clusters with the same `catena`.
func currentExecutable() -> String {
    URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
}

/// Checks the options the cluster benchmarks share.
private func validateBenchOptions(dir: String?, logLevel: String) throws {
    guard Logger.Level(rawValue: logLevel) != nil else {
        throw ValidationError("--log-level: unknown level '\(logLevel)'")
    }
    if let dir {
        var isDirectory: ObjCBool = false
        guard !dir.isEmpty, FileManager.default.fileExists(atPath: dir, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ValidationError("--dir \(dir) is not an existing directory")
        }
    }
}

private func fixed1(_ x: Double) -> String { String(format: "%.1f", x) }
