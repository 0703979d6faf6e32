import ArgumentParser
import CatenaBench
import CatenaCore
import CatenaStorage
import Foundation

/// `catena bench-compaction`: what a compaction costs a store's writers and readers.
struct BenchCompaction: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-compaction",
        abstract: "Measure a store's write and read throughput before, during and after a compaction.",
        discussion: """
            Fills a fresh store with --fill-mib MiB of overwrites of --keys keys (most of the log \
            becomes garbage), then runs --writers writers (one put per call, random keys, wall-clock \
            head timestamps) and --readers readers (whole values of random keys) through three \
            phases: --phase-seconds before, during a compaction (watermark raised to the log's end \
            first), and --phase-seconds after. Reports per-phase puts/s, gets/s and put latency, \
            the ratios during/before and after/before, and the slowest 250 ms during the compaction.
            """
    )

    @Option(help: "Bytes per value (suffixes B, K/KiB, M/MiB; 1 B ... 16 MiB).") var valueSize: String = "4KiB"
    @Option(help: "Distinct keys (their newest versions are the live data).") var keys: Int = 131_072
    @Option(help: "MiB of values written before the measured phases.") var fillMib: Int = 1024
    @Option(help: "Concurrent writer tasks.") var writers: Int = 32
    @Option(help: "Concurrent reader tasks.") var readers: Int = 4
    @Option(help: "Seconds of the phases before and after the compaction.") var phaseSeconds: Int = 5
    @Option(help: "The store's request-id window in seconds (a node keeps 60; the fill must be older than it).") var requestWindowSeconds: Int = 2
    @Option(help: "A directory for the store (default: a new temporary directory under $TMPDIR or /var/tmp, removed afterwards).")
    var dir: String?

    func validate() throws {
        guard let size = parseSize(valueSize), (1...(16 << 20)).contains(size) else {
            throw ValidationError("--value-size: '\(valueSize)' is not a size of 1 B ... 16 MiB")
        }
        guard keys >= 1 else { throw ValidationError("--keys must be at least 1") }
        guard (0...(1 << 20)).contains(fillMib) else { throw ValidationError("--fill-mib must be 0 ... 1048576, not \(fillMib)") }
        guard (1...10_000).contains(writers) else { throw ValidationError("--writers must be 1 ... 10000, not \(writers)") }
        guard (0...10_000).contains(readers) else { throw ValidationError("--readers must be 0 ... 10000, not \(readers)") }
        guard (1...3600).contains(phaseSeconds) else { throw ValidationError("--phase-seconds must be 1 ... 3600, not \(phaseSeconds)") }
        guard requestWindowSeconds >= 0 else { throw ValidationError("--request-window-seconds cannot be negative") }
        if let dir, dir.isEmpty { throw ValidationError("--dir must not be empty") }
    }

    func run() async throws {
        let temporary = dir == nil
        let directory = try dir ?? ScratchSpace.makeTemporaryDirectory(prefix: "catena-bench-compaction")
        if !temporary { try ScratchSpace.ensureDirectory(directory) }
        let place = ScratchSpace.mount(of: directory).map { "\($0)" } ?? "unknown file system"
        var c = CompactionBenchmark.Configuration(directory: directory)
        c.valueSize = parseSize(valueSize)!
        c.keySpace = keys
        c.fillBytes = fillMib << 20
        c.writers = writers
        c.readers = readers
        c.phase = .seconds(phaseSeconds)
        c.requestWindow = .seconds(requestWindowSeconds)
        c.progress = { writeStandardError($0) }
        print("catena bench-compaction: \(ProcessInfo.processInfo.activeProcessorCount) cores; directory: \(directory) (\(place))")
        let report: CompactionBenchmark.Report
        do {
            report = try await CompactionBenchmark(c).run()
        } catch {
            if temporary { try? ScratchSpace.removeTree(directory) }
            throw error
        }
        if temporary { try ScratchSpace.removeTree(directory) }
        print(report.table())
    }
}
