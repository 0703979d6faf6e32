import ArgumentParser
import CatenaBench
import CatenaCore
import CatenaStorage
import Foundation

/// `catena bench-catchup`: how fast a joining node copies a log from its source, LZ4 and raw.
struct BenchCatchUp: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-catchup",
        abstract: "Measure catch-up (log copy from a source node) on loopback, with LZ4 and without.",
        discussion: """
            Fills a source store with --mib MiB of --value-size values (per 4 KiB: 2 KiB random \
            bytes, then a 64-byte text line repeated), serves it on 127.0.0.1, and in each of \
            --rounds rounds copies it into a fresh receiver store once per codec (LZ4 chunks, raw \
            chunks; even rounds in reverse order). Reports MB/s of records installed (durable at \
            the receiver) per copy, the median per codec, and the compression ratio. Goal: the \
            median of each codec in --codecs >= 300 MB/s (a codec not measured has no goal). Exit \
            status 6 after the report when a codec misses it, with a last line on stderr naming it.
            """
    )

    @Option(help: "MiB of values in the source's log.") var mib: Int = 1024
    @Option(help: "Bytes per value (suffixes B, K/KiB, M/MiB; 1 B ... 16 MiB).") var valueSize: String = "64KiB"
    @Option(help: "Bytes of records per chunk the receiver asks for, in KiB (64 ... 8192).") var chunkKib: Int = 4096
    @Option(help: "The receiver's durability: batch, always or none.") var durability: BenchStorage.DurabilityOption = .batch
    @Option(help: "Comma-separated codecs to measure, in order: lz4, raw.") var codecs: String = "lz4,raw"
    @Option(help: "Rounds (1 ... 20), each copying once per codec.") var rounds: Int = 3
    @Option(help: "A directory for the stores (default: a new temporary directory under $TMPDIR or /var/tmp, removed afterwards).")
    var dir: String?
    @Option(help: "Also write the report, goals included, as JSON to this file.") var json: String?

    func validate() throws {
        guard (1...(1 << 20)).contains(mib) else { throw ValidationError("--mib must be 1 ... 1048576, not \(mib)") }
        guard let size = parseSize(valueSize), (1...(16 << 20)).contains(size) else {
            throw ValidationError("--value-size: '\(valueSize)' is not a size of 1 B ... 16 MiB")
        }
        guard CatchUpBenchmark.chunkBytesRange.contains(chunkKib << 10) else {
            throw ValidationError("--chunk-kib must be 64 ... 8192, not \(chunkKib)")
        }
        if let dir, dir.isEmpty { throw ValidationError("--dir must not be empty") }
        guard (1...20).contains(rounds) else { throw ValidationError("--rounds must be 1 ... 20, not \(rounds)") }
        _ = try parsedCodecs()
        try validateJSONPath(json)
    }

    func parsedCodecs() throws -> [CatchUpBenchmark.Codec] {
        let names = codecs.split(separator: ",", omittingEmptySubsequences: false)
        let parsed = names.compactMap { CatchUpBenchmark.Codec(rawValue: String($0)) }
        guard !parsed.isEmpty, parsed.count == names.count, Set(parsed).count == parsed.count else {
            throw ValidationError("--codecs: '\(codecs)' is not a list of distinct codecs among lz4, raw")
        }
        return parsed
    }

    func run() async throws {
        let temporary = dir == nil
        let directory = try dir ?? ScratchSpace.makeTemporaryDirectory(prefix: "catena-bench-catchup")
        if !temporary { try ScratchSpace.ensureDirectory(directory) }
        let place = ScratchSpace.mount(of: directory).map { "\($0)" } ?? "unknown file system"
        var c = CatchUpBenchmark.Configuration(directory: directory)
        c.volume = mib << 20
        c.valueSize = parseSize(valueSize)!
        c.maxChunkBytes = chunkKib << 10
        c.durability = durability.value
        c.codecs = try parsedCodecs()
        c.rounds = rounds
        c.progress = { writeStandardError($0) }
        print("catena bench-catchup: \(mib) MiB of \(sizeName(c.valueSize)) values (per 4 KiB: 2 KiB random, 2 KiB repeated text), "
              + "\(sizeName(c.maxChunkBytes)) chunks, 127.0.0.1, \(ProcessInfo.processInfo.activeProcessorCount) cores")
        print("directory: \(directory) (\(place)); receiver durability \(durability.rawValue)")
        let report: CatchUpBenchmark.Report
        do {
            report = try await CatchUpBenchmark(c).run()
        } catch {
            if temporary { try? ScratchSpace.removeTree(directory) }
            throw error
        }
        if temporary { try ScratchSpace.removeTree(directory) }
        print("round  codec   records   MB of records   MB on wire   ratio   seconds     MB/s")
        for r in report.copies {
            let line = [String(format: "%5d ", r.round), "\(r.codec)".padding(toLength: 5, withPad: " ", startingAt: 0),
                        String(format: "%9d", r.records), String(format: "%15.1f", Double(r.recordBytes) / 1e6),
                        String(format: "%12.1f", Double(r.wireBytes) / 1e6), String(format: "%7.2f", r.compressionRatio),
                        String(format: "%9.2f", r.seconds), String(format: "%8.0f", r.megabytesPerSecond)]
            print(line.joined(separator: " "))
        }
        for codec in c.codecs {
            guard let median = report.median(codec) else { continue }
            let all = report.copies.filter { $0.codec == codec }.map(\.megabytesPerSecond)
            let goal = report.goal(codec)
            print("\(codec): median \(String(format: "%.0f", median.megabytesPerSecond)) MB/s "
                  + "(\(String(format: "%.0f", all.min()!))-\(String(format: "%.0f", all.max()!)) over \(all.count)), "
                  + "ratio \(String(format: "%.2f", median.compressionRatio)); goal >= \(String(format: "%.0f", goal.threshold)) MB/s: "
                  + (goal.met == true ? "met" : "MISSED"))
        }
        let full = CatchUpBenchmarkReport(report, configuration: c, cores: ProcessInfo.processInfo.activeProcessorCount)
        if let json { try writeBenchmarkJSON(full, to: json) }
        try exitIfGoalsMissed("bench-catchup", full.goals)
    }
}
