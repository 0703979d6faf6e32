import ArgumentParser
import CatenaBench
import CatenaCore
import CatenaNetwork
import CatenaStorage
import Foundation
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The `catena` command line: a thin shell that parses flags, builds configurations and runs.
@main
struct Catena: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "catena",
        abstract: "Catena, a chain-replication object store.",
        version: "catena \(CatenaBuild.version) (data directory format \(DataDirectory.formatVersion), record format \(RecordHeader.currentVersion))",
        subcommands: [Up.self, MasterCommand.self, NodeGroup.self, ChainCommand.self, Put.self, Get.self, Remove.self, List.self, Stat.self, Copy.self, Settle.self, UploadCommand.self, Bench.self,
                      BenchMultipart.self,
                      BenchStorage.self, BenchChain.self, BenchCatchUp.self, BenchFailover.self, BenchJoin.self, BenchCompaction.self,
                      Simulate.self, Version.self]
    )

    /// Like the default, but a failure in `run()` is one line on stderr and exit status 1.
    static func main() async {
        // The key a write command writes, for the hint after an ambiguous failure.
        var writtenKey: String?
        do {
            var command = try parseAsRoot()
            writtenKey = (command as? KeyedWrite)?.writtenKey
            // Before anything uses NIO's shared event loops.
            if let loops = EventLoopTaskExecutor.loopCount(environment: ProcessInfo.processInfo.environment, cores: System.coreCount,
                                                           server: command is NodeCommand || command is MasterCommand) {
                NIOSingletons.groupLoopCountSuggestion = loops
            }
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as CatenaError where error.code == .notFound {
            // `not found: KEY` as it is, for scripts.
            writeStandardError(error.message)
            Glibc.exit(ExitStatus.notFound.rawValue)
        } catch let error as CatenaError {
            writeStandardError("catena: error: \(error.message) [\(error.code)]")
            if let id = error.requestID,
               [.timeout, .cancelled, .unavailable, .closed, .busy, .redirect, .staleEpoch, .epochAhead].contains(error.code) {
                let key = writtenKey.map(shellQuoted) ?? "KEY"
                writeStandardError("catena: the write may or may not have applied; `catena settle \(key) \(id)` tells which (soon: a head remembers writes for about a minute)")
            }
            Glibc.exit(ExitStatus(error.code).rawValue)
        } catch {
            exit(withError: error)
        }
    }
}

/// The `catena` command's exit statuses, one per kind of outcome a script may act on.
enum ExitStatus: Int32 {
    /// It did what was asked.
    case success = 0
    /// Any failure not below.
    case failure = 1
    /// The key, upload or node does not exist (`settle`: the write did not apply).
    case notFound = 2
    /// The cluster could not be reached or did not answer in time: a retry may help.
    case unavailable = 3
    /// Data is wrong: a checksum mismatch, damage found, a verification difference.
    case dataError = 4
    /// Refused: a write's condition failed, or permission was denied.
    case refused = 5
    /// A benchmark ran but missed a goal it states.
    case goalMissed = 6
    /// The command line is wrong (ArgumentParser's status for a usage error).
    case usage = 64

    /// The status of a command that failed with `code`.
    init(_ code: CatenaError.Code) {
        switch code {
        case .notFound, .noSuchUpload: self = .notFound
        case .unavailable, .timeout, .busy, .closed, .redirect, .staleEpoch, .epochAhead, .cancelled: self = .unavailable
        case .checksumMismatch, .corruption, .malformed: self = .dataError
        case .preconditionFailed, .permissionDenied, .invalidPart, .invalidArgument: self = .refused
        case .invalidKey: self = .usage
        default: self = .failure
        }
    }
}

/// A command that writes one key: an ambiguous failure's hint names it.
protocol KeyedWrite {
    /// The key the command writes.
    var writtenKey: String { get }
}

/// `text` as one shell word: as it is if it needs no quoting, else in single quotes.
func shellQuoted(_ text: String) -> String {
    let plain = !text.isEmpty && text.unicodeScalars.allSatisfy { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "/._-:@+,=".unicodeScalars.contains($0)) }
    return plain ? text : "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
}

/// `catena version`: the build's format versions.
struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the build version and the on-disk and record format versions.")

    func run() {
        print("catena \(CatenaBuild.version)")
        print("data directory format \(DataDirectory.formatVersion)")
        print("record format \(RecordHeader.currentVersion)")
    }
}

/// `catena bench-chain`: put and get throughput of 1- and 3-node chains of real processes.
struct BenchChain: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-chain",
        abstract: "Measure a 3-node chain against a 1-node chain on loopback (replication efficiency).",
        discussion: """
            For each value size: starts a 1-node cluster and runs --count puts (large values: \
            --large-volume-mib MiB) from --clients concurrent clients; then a 3-node cluster, the \
            same puts, and gets of every key from the tail. Replication efficiency = 3 x (3-node \
            puts/s) / (1-node puts/s); goals 0.6 (below 1 MiB) and 0.8 (1 MiB and above), one per \
            size measured. Exit status 6 after the report when a size misses its goal, with a \
            last line on stderr naming it.
            """
    )

    @Option(name: .long, help: "Concurrent clients.") var clients: Int = 32
    @Option(name: .long, help: "Client library instances the clients share, each with its own connection to each node (default: one per client).") var connections: Int?
    @Option(name: .long, help: "Comma-separated value sizes (e.g. 4KiB,1MiB).") var sizes: String = "4KiB,1MiB"
    @Option(name: .long, help: "Puts per measurement for values below 64 KiB.") var count: Int = 40_000
    @Option(name: .long, help: "MiB of values per measurement for values of 64 KiB and more.") var largeVolumeMib: Int = 1024
    @Option(name: .long, help: "Where the clusters keep their data (default: a temporary directory).") var dir: String?
    @Option(name: .long, help: "The nodes' durability: batch (default), always or none.") var durability: String = "batch"
    @Option(name: .long, help: "The nodes' --group-commit-delay-us (default: the node's default).") var groupCommitDelayUs: Int?
    @Option(name: .long, help: "Also write the results, CPU per operation of every process and the goals included, as JSON to this file.") var json: String?

    func validate() throws {
        guard clients >= 1, count >= 1, largeVolumeMib >= 1, (connections ?? 1) >= 1 else { throw ValidationError("counts must be positive") }
        try NodeCommand.validateGroupCommitDelay(groupCommitDelayUs)
        try validateJSONPath(json)
        _ = try parsedSizes()
    }

    func parsedSizes() throws -> [Int] {
        try sizes.split(separator: ",").map { text in
            guard let n = parseSize(String(text)) else { throw ValidationError("--sizes: cannot read '\(text)'") }
            return n
        }
    }

    func run() async throws {
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        let base = dir ?? (FileManager.default.temporaryDirectory.path + "/catena-bench-chain-\(getpid())")
        var configuration = ChainBenchmark.Configuration(executable: executable, directory: base)
        configuration.clients = clients
        configuration.connections = connections
        configuration.sizes = try parsedSizes()
        configuration.smallCount = count
        configuration.nodeArguments = ["--durability", durability]
        if let groupCommitDelayUs { configuration.nodeArguments += ["--group-commit-delay-us", "\(groupCommitDelayUs)"] }
        configuration.largeVolume = largeVolumeMib << 20
        configuration.progress = { writeStandardError($0) }
        defer { if dir == nil { try? FileManager.default.removeItem(atPath: base) } }
        let sharing = connections.map { min($0, clients) }.map { ", sharing \($0) client instance\($0 == 1 ? "" : "s")" } ?? ""
        print("catena bench-chain: \(clients) clients\(sharing), loopback, \(ProcessInfo.processInfo.activeProcessorCount) cores")
        let results = try await ChainBenchmark(configuration).run()
        let report = ChainBenchmarkReport(results, clients: clients, cores: ProcessInfo.processInfo.activeProcessorCount)
        print("size      1-node put/s   3-node put/s   3-node MB/s   tail get/s   efficiency   goal")
        for (r, size) in zip(results, report.sizes) {
            let line = [sizeName(r.valueSize).padding(toLength: 8, withPad: " ", startingAt: 0),
                        String(format: "%12.0f", r.put1.opsPerSecond), String(format: "%14.0f", r.put3.opsPerSecond),
                        String(format: "%13.1f", r.put3.megabytesPerSecond), String(format: "%12.0f", r.get3.opsPerSecond),
                        String(format: "%12.2f", r.efficiency),
                        String(format: "   >= %.1f %@", r.goal, size.goalMet ? "met" : "MISSED")]
            print(line.joined(separator: " "))
        }
        print("")
        print("CPU per operation, µs (user+system), of every process: the benchmark's clients, the master, each node")
        for m in results.flatMap({ [$0.put1, $0.put3, $0.get3] }) {
            let shares = m.cpuPerOperation.map { share in
                "\(share.process) " + String(format: "%.0f (%.0f+%.0f)", share.userMicroseconds + share.systemMicroseconds,
                                              share.userMicroseconds, share.systemMicroseconds)
            }
            print("\(m.label): total \(String(format: "%.0f", m.cpuMicrosecondsPerOperation)); " + shares.joined(separator: ", "))
        }
        if let json { try writeBenchmarkJSON(report, to: json) }
        try exitIfGoalsMissed("bench-chain", report.goals)
    }
}

/// `catena bench-storage`: store append throughput and latency next to the raw disk's speed.
struct BenchStorage: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-storage",
        abstract: "Measure the storage engine's append throughput against the raw disk.",
        discussion: """
            For each value size, runs --repeat rounds. A round opens a fresh store, runs \
            concurrent single-record appenders until min(--small-count, --large-volume-mib / size) \
            records are durable, and writes the same bytes to a plain file (1 MiB write()s; fsync \
            at the end, and every 16 MiB); odd rounds run the store first, even rounds the raw \
            disk. Reports the median and range of the rounds; the ratio to the raw disk is the \
            median of the per-round ratios. Goals, on the medians: 4 KiB >= 30,000 puts/s, 1 MiB \
            >= 80% of the raw disk; a goal whose size is not in --sizes is not measured and not \
            missed. Exit status 6 after the report when a goal is missed, with a last line on \
            stderr naming it.
            """
    )

    enum DurabilityOption: String, ExpressibleByArgument, CaseIterable {
        case batch, always, none
        var value: Durability {
            switch self {
            case .batch: .batch
            case .always: .always
            case .none: .none
            }
        }
    }

    enum EncodingOption: String, ExpressibleByArgument, CaseIterable {
        case underLock = "under-lock"
        case outsideLock = "outside-lock"
        var value: StorageBenchmark.Encoding {
            switch self {
            case .underLock: .underLock
            case .outsideLock: .outsideLock
            }
        }
    }

    @Option(help: "A directory on the disk to measure (default: a new temporary directory under $TMPDIR or /var/tmp, removed afterwards).")
    var dir: String?

    @Option(help: "Concurrent appender tasks.")
    var concurrency: Int = 64

    @Option(help: "The store's durability: batch, always or none.")
    var durability: DurabilityOption = .batch

    @Option(help: "At most this many records per value size and round.")
    var smallCount: Int = 100_000

    @Option(help: "At most this many MiB of values per value size and round.")
    var largeVolumeMib: Int = 2048

    @Option(name: .customLong("repeat"), help: "Rounds per value size (1 ... 20), each measuring the store and the raw disk.")
    var repetitions: Int = 3

    @Option(help: "Comma-separated value sizes, e.g. 4KiB,1MiB (suffixes B, K/KiB, M/MiB; 1 B ... 16 MiB).")
    var sizes: String = "4KiB,1MiB"

    @Option(help: "Where appenders encode records: under-lock or outside-lock.")
    var encoding: EncodingOption = .outsideLock

    @Option(help: "Override the store's group-commit size, in KiB (default: the store's, 16 MiB).")
    var groupCommitKib: Int?

    @Option(help: "Override the store's group-commit delay, in microseconds (default: the store's, 0).")
    var groupCommitDelayUs: Int?

    @Flag(help: "Print the report, goals included, as JSON instead of a table.")
    var json = false

    func validate() throws {
        guard (1...100_000).contains(concurrency) else {
            throw ValidationError("--concurrency must be 1 ... 100000, not \(concurrency)")
        }
        guard StorageBenchmark.Configuration.repetitionRange.contains(repetitions) else {
            throw ValidationError("--repeat must be 1 ... 20, not \(repetitions)")
        }
        guard smallCount >= 1 else { throw ValidationError("--small-count must be at least 1, not \(smallCount)") }
        guard (1...(1 << 20)).contains(largeVolumeMib) else {
            throw ValidationError("--large-volume-mib must be 1 ... 1048576, not \(largeVolumeMib)")
        }
        _ = try parsedSizes()
        if let g = groupCommitKib, !(1...(1 << 20)).contains(g) {
            throw ValidationError("--group-commit-kib must be 1 ... 1048576, not \(g)")
        }
        if let d = groupCommitDelayUs, !(0...1_000_000).contains(d) {
            throw ValidationError("--group-commit-delay-us must be 0 ... 1000000, not \(d)")
        }
        if let dir {
            guard !dir.isEmpty else { throw ValidationError("--dir must not be empty") }
            var st = stat()
            guard stat(dir, &st) == 0 else { throw ValidationError("--dir \(dir) does not exist") }
            guard (st.st_mode & S_IFMT) == S_IFDIR else { throw ValidationError("--dir \(dir) is not a directory") }
        }
    }

    func parsedSizes() throws -> [Int] {
        var out: [Int] = []
        for part in sizes.split(separator: ",", omittingEmptySubsequences: false) {
            guard let n = parseSize(String(part)), (1...(16 << 20)).contains(n) else {
                throw ValidationError("--sizes: '\(part)' is not a size of 1 B ... 16 MiB (e.g. 4KiB, 1MiB, 512)")
            }
            guard !out.contains(n) else { throw ValidationError("--sizes: \(sizeName(n)) is listed twice") }
            out.append(n)
        }
        return out
    }

    func run() async throws {
        let temporary = dir == nil
        let directory = try dir ?? ScratchSpace.makeTemporaryDirectory()
        if !temporary { try ScratchSpace.ensureDirectory(directory) }
        let where_ = ScratchSpace.mount(of: directory).map { "\($0)" } ?? "unknown file system"
        // With --json, stdout carries only the report; the narration goes to stderr.
        let say: (String) -> Void = json ? { writeStandardError($0) } : { print($0) }
        say("directory: \(directory) (\(where_))")

        var c = StorageBenchmark.Configuration(directory: directory)
        c.valueSizes = try parsedSizes()
        c.concurrency = concurrency
        c.repetitions = repetitions
        c.durability = durability.value
        c.encoding = encoding.value
        c.maxRecordsPerSize = smallCount
        c.maxBytesPerSize = largeVolumeMib << 20
        c.groupCommitMaxBytes = groupCommitKib.map { $0 << 10 }
        c.groupCommitDelay = groupCommitDelayUs.map { .microseconds($0) }
        for size in c.valueSizes {
            say("\(sizeName(size)): \(c.recordCount(forValueSize: size)) records x \(c.repetitions) round\(c.repetitions == 1 ? "" : "s")")
        }
        if json {
            c.progress = { line in writeStandardError(line) }
        } else {
            c.progress = { line in print(line) }
        }

        let report: StorageBenchmark.Report
        do {
            report = try await StorageBenchmark(c).run()
        } catch {
            if temporary { try? ScratchSpace.removeTree(directory) }
            throw error
        }
        if temporary { try ScratchSpace.removeTree(directory) }
        if json {
            print(report.json())
        } else {
            print("")
            print(report.table())
        }
        try exitIfGoalsMissed("bench-storage", report.goals)
    }
}

/// With `CATENA_PARENT_PID` set (by a test, or `catena up`): a task that exits this process
/// once that parent is gone, so a command started by a test ends when the test does.
func exitWhenParentExits() -> Task<Void, Never>? {
    ProcessInfo.processInfo.environment["CATENA_PARENT_PID"].flatMap(Int32.init).map { parent in
        Task.detached {
            while !Task.isCancelled {
                if getppid() != parent { Glibc.exit(ExitStatus.failure.rawValue) }
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
    }
}

/// Ends a lab benchmark after its report: when a goal it measured was missed, one line on
/// stderr naming each (after whatever is on stdout) and exit status 6 (``ExitStatus/goalMissed``).
/// A goal the run did not measure is not missed.
func exitIfGoalsMissed(_ command: String, _ goals: [BenchmarkGoal]) throws {
    let missed = BenchmarkGoal.missed(goals)
    guard !missed.isEmpty else { return }
    fflush(nil)  // every stdio output stream: the report on stdout comes first
    writeStandardError("catena \(command): missed \(missed.count) goal\(missed.count == 1 ? "" : "s"): "
                       + missed.map { "\($0.goal) (\($0.measured))" }.joined(separator: "; "))
    throw ExitCode(ExitStatus.goalMissed.rawValue)
}

/// Writes a lab benchmark's report as JSON (``labBenchmarkJSON(_:)``) to the file at `path`.
func writeBenchmarkJSON(_ report: some Encodable, to path: String) throws {
    try labBenchmarkJSON(report).write(to: URL(fileURLWithPath: path))
}

/// Checks a benchmark's `--json FILE` before the run, so a run of minutes is not lost to a
/// directory that does not exist.
func validateJSONPath(_ path: String?) throws {
    guard let path else { return }
    guard !path.isEmpty else { throw ValidationError("--json needs a file name") }
    let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
        throw ValidationError("--json \(path): the directory \(directory) does not exist")
    }
}

/// `value` as JSON for the `--json` outputs, keys sorted, and a newline: indented unless
/// `compact` (one line), keys in snake case with `snakeCase`, slashes as they are with
/// `plainSlashes`.
func jsonText(_ value: some Encodable, compact: Bool = false, snakeCase: Bool = false, plainSlashes: Bool = false) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    if !compact { encoder.outputFormatting.insert(.prettyPrinted) }
    if plainSlashes { encoder.outputFormatting.insert(.withoutEscapingSlashes) }
    if snakeCase { encoder.keyEncodingStrategy = .convertToSnakeCase }
    return String(decoding: try encoder.encode(value), as: UTF8.self) + "\n"
}

/// Writes `line` and a newline to file descriptor 2.
func writeStandardError(_ line: String) {
    var text = line + "\n"
    text.withUTF8 { buf in _ = write(2, buf.baseAddress, buf.count) }
}
