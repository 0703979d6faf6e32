import ArgumentParser
import CatenaBench
import CatenaCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `catena bench-multipart`: a multipart upload against one streamed put of the same object.
struct BenchMultipart: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-multipart",
        abstract: "Measure a multipart upload (parts in parallel) against one streamed put of the same object, through a 3-node chain.",
        discussion: """
            Starts a master and a 3-node chain of real catena processes (this executable) on \
            127.0.0.1, stores --size bytes of pseudo-random data as one streamed put, then as a \
            multipart upload of --parts parts all stored at once (each streamed in 1 MiB chunks), \
            reads each back whole and at --ranged-reads random ranges, comparing every byte, and \
            reports MB/s and every process's peak resident memory. Exits non-zero if a byte \
            differs or a process's peak exceeds --max-rss-mib.
            """
    )

    @Option(help: "The object's size (suffixes B, KiB, MiB, GiB).") var size: String = "1GiB"
    @Option(help: "Parts of the multipart upload, all stored at once.") var parts: Int = 8
    @Option(help: "Ranged reads at random offsets per object.") var rangedReads: Int = 64
    @Flag(help: "Skip the streamed put (only the multipart upload).") var multipartOnly = false
    @Option(help: "Rounds (1 ... 20), each storing the object both ways; odd rounds the multipart upload first.") var rounds = 1
    @Option(help: "Fail if any process's peak resident memory exceeds this many MiB (0: no limit).") var maxRssMib: Int = 256
    @Option(help: "A directory for the cluster (default: a new temporary directory, removed afterwards).") var dir: String?

    func validate() throws {
        guard let bytes = parseGiBSize(size), bytes >= 1 else { throw ValidationError("--size: '\(size)' is not a size") }
        guard (1...Manifest.maxParts).contains(parts), UInt64(parts) <= bytes else {
            throw ValidationError("--parts must be 1 ... \(Manifest.maxParts) and at most the size")
        }
        guard (1...20).contains(rounds) else { throw ValidationError("--rounds must be 1 ... 20") }
        guard rangedReads >= 0, maxRssMib >= 0 else { throw ValidationError("--ranged-reads and --max-rss-mib must not be negative") }
    }

    func run() async throws {
        // Started by a test: ends when the test does (its cluster's processes follow it).
        let watcher = exitWhenParentExits()
        defer { watcher?.cancel() }
        let directory = try dir ?? ScratchSpace.makeTemporaryDirectory(prefix: "catena-bench-multipart")
        var c = MultipartBenchmark.Configuration(executable: currentExecutable(), directory: directory)
        c.size = parseGiBSize(size)!
        c.parts = parts
        c.rangedReads = rangedReads
        c.streamedPut = !multipartOnly
        c.rounds = rounds
        c.progress = { writeStandardError($0) }
        print("catena bench-multipart: \(c.size) bytes, \(parts) parts, 3-node chain on 127.0.0.1, \(ProcessInfo.processInfo.activeProcessorCount) cores")
        let report = try await MultipartBenchmark(c).run()
        print("round  upload                      seconds    MB/s   read back MB/s   ranged reads   bytes compared   client peak RSS (store, read)")
        for u in report.uploads {
            print(String(format: "%5d  ", u.round) + u.name.padding(toLength: 26, withPad: " ", startingAt: 0)
                  + String(format: " %8.2f %7.1f %16.1f %14d   all equal        %4d MiB, %4d MiB", u.seconds, u.megabytesPerSecond, u.readMegabytesPerSecond,
                           u.rangedReads, (u.clientPeakStoring ?? 0) >> 20, (u.clientPeakReading ?? 0) >> 20))
        }
        let streamed = report.uploads.filter { $0.name == "streamed put" }.map(\.megabytesPerSecond)
        let multipart = report.uploads.filter { $0.name != "streamed put" }.map(\.megabytesPerSecond)
        if !streamed.isEmpty {
            let mean = { (v: [Double]) in v.reduce(0, +) / Double(v.count) }
            print(String(format: "multipart / streamed put: %.2f× the throughput (means over %d rounds: %.1f vs %.1f MB/s)",
                         mean(multipart) / mean(streamed), rounds, mean(multipart), mean(streamed)))
        }
        var over: [String] = []
        for (name, bytes) in report.peakResident {
            print("peak RSS \(name): \(bytes >> 20) MiB")
            if maxRssMib > 0 && bytes > maxRssMib << 20 { over.append("\(name) \(bytes >> 20) MiB") }
        }
        if !over.isEmpty { throw CatenaError(.invalidArgument, "peak resident memory above \(maxRssMib) MiB: \(over.joined(separator: ", "))") }
    }
}

/// A size with a B, KiB, MiB or GiB suffix (or none), as UInt64.
func parseGiBSize(_ text: String) -> UInt64? {
    if text.hasSuffix("GiB"), let n = UInt64(text.dropLast(3)) { return n << 30 }
    return parseSize(text).map { UInt64($0) }
}
