import CatenaClient
import CatenaCluster
import CatenaCore
import Foundation
import Synchronization

/// `catena bench-multipart`: one large object stored twice through a 3-node chain of real
/// processes — as one streamed put, then as a multipart upload of parts stored in parallel —
/// each read back whole and at random ranges and compared byte for byte, with every process's
/// peak resident memory.
public struct MultipartBenchmark: Sendable {
    public struct Configuration: Sendable {
        /// The `catena` executable to start the cluster with.
        public var executable: String
        /// A fresh directory for the cluster (removed afterwards).
        public var directory: String
        /// The object's size in bytes.
        public var size: UInt64 = 1 << 30
        /// How many parts, all stored at once (with the client's default windows: 8 chunks in
        /// flight over the client, as for the streamed put).
        public var parts: Int = 8
        /// Ranged reads at random offsets per object.
        public var rangedReads: Int = 64
        /// Whether to store the object as one streamed put too (the comparison).
        public var streamedPut = true
        /// Rounds, each storing the object both ways (odd rounds the multipart upload first).
        public var rounds = 1
        public var seed: UInt64 = 1
        public var progress: @Sendable (String) -> Void = { _ in }

        public init(executable: String, directory: String) {
            self.executable = executable
            self.directory = directory
        }
    }

    /// What one way of storing the object measured.
    public struct Upload: Sendable {
        public var name: String
        public var round: Int
        public var seconds: Double
        public var bytes: UInt64
        public var readSeconds: Double
        public var rangedReads: Int
        /// This process's peak resident memory while storing, and while reading back (bytes).
        public var clientPeakStoring: Int?
        public var clientPeakReading: Int?
        public var megabytesPerSecond: Double { Double(bytes) / 1e6 / seconds }
        public var readMegabytesPerSecond: Double { Double(bytes) / 1e6 / readSeconds }
    }

    public struct Report: Sendable {
        public var uploads: [Upload] = []
        /// Peak resident set size per process (`master`, `n1` ... `n3`, `client`: this one), bytes.
        public var peakResident: [(name: String, bytes: Int)] = []
    }

    let configuration: Configuration

    public init(_ configuration: Configuration) {
        self.configuration = configuration
    }

    public func run() async throws(CatenaError) -> Report {
        let c = configuration
        guard c.parts >= 1, c.parts <= Manifest.maxParts, c.size >= UInt64(c.parts) else {
            throw CatenaError(.invalidArgument, "\(c.parts) parts of a \(c.size)-byte object")
        }
        return try await BenchCluster.with(executable: c.executable, directory: c.directory, nodes: 3) { (cluster) async throws(CatenaError) -> Report in
            let configuration = {
                var configuration = CatenaClient.Configuration()
                configuration.requestTimeout = .seconds(120)
                return configuration
            }()
            // One client with the default windows: a streamed put keeps 8 chunks in flight; the
            // parts share the client's 8.
            let client = try await BenchCluster.clients(1, of: cluster, configuration: configuration)[0]
            var report = Report()
            do throws(CatenaError) {
                for round in 0..<c.rounds {
                    // Odd rounds store the multipart upload first: neither way always meets the
                    // other's write-back still going to disk.
                    var ways = c.streamedPut ? [false, true] : [true]
                    if round % 2 == 1 { ways.reverse() }
                    for multipart in ways {
                        let key = "bench/\(multipart ? "multipart" : "streamed")/\(round)"
                        sync()
                        Self.resetOwnPeak()
                        let start = ContinuousClock.now
                        if multipart {
                            c.progress("round \(round + 1): storing \(c.size) bytes as a multipart upload of \(c.parts) parts at once")
                            try await storeMultipart(client, key)
                        } else {
                            c.progress("round \(round + 1): storing \(c.size) bytes as one streamed put")
                            try await client.put(key, streaming: GeneratedBytes(seed: c.seed, range: 0..<c.size))
                        }
                        let seconds = Self.seconds(ContinuousClock.now - start)
                        let storing = Self.ownPeakResidentBytes()
                        Self.resetOwnPeak()
                        let read = try await verify(client, key)
                        report.uploads.append(Upload(name: multipart ? "multipart, \(c.parts) parts" : "streamed put", round: round + 1,
                                                     seconds: seconds, bytes: c.size, readSeconds: read, rangedReads: c.rangedReads,
                                                     clientPeakStoring: storing, clientPeakReading: Self.ownPeakResidentBytes()))
                    }
                    // The next round's objects take the disk space back over time (compaction).
                    for multipart in ways { try await client.delete("bench/\(multipart ? "multipart" : "streamed")/\(round)") }
                }
            } catch {
                await client.close()
                throw error
            }
            await client.close()
            for name in ["master", "n1", "n2", "n3"] {
                if let bytes = cluster.peakResidentBytes(name) { report.peakResident.append((name, bytes)) }
            }
            let own = report.uploads.flatMap { [$0.clientPeakStoring, $0.clientPeakReading] }.compactMap { $0 }.max()
            if let own { report.peakResident.append(("client", own)) }
            return report
        }
    }

    /// Stores the object as a multipart upload, all parts at once.
    private func storeMultipart(_ client: CatenaClient, _ key: String) async throws(CatenaError) {
        let c = configuration
        let upload = try await client.createMultipartUpload(key)
        let partSize = (c.size + UInt64(c.parts) - 1) / UInt64(c.parts)
        let stored = try await withThrowingTaskGroupOfParts { group in
            for number in 1...c.parts {
                let range = UInt64(number - 1) * partSize..<min(c.size, UInt64(number) * partSize)
                group.addTask {
                    try await client.uploadPart(upload, number: number, streaming: GeneratedBytes(seed: c.seed, range: range))
                }
            }
        }
        try await client.completeMultipartUpload(upload, parts: stored.sorted { $0.number < $1.number })
    }

    /// Reads `key` back whole, comparing every byte with what was generated (returns the
    /// seconds the whole read took), then `rangedReads` ranges at random offsets.
    private func verify(_ client: CatenaClient, _ key: String) async throws(CatenaError) -> Double {
        let c = configuration
        let start = ContinuousClock.now
        let stream = try await client.getStreaming(key)
        guard stream.info.size == c.size else { throw CatenaError(.checksumMismatch, "'\(key)' holds \(stream.info.size) bytes, not \(c.size)") }
        var offset: UInt64 = 0
        var pieces = stream.byteBuffers.makeAsyncIterator()
        do {
            while let piece = try await pieces.next() {
                guard piece.readableBytes == 0 || piece.withUnsafeReadableBytes({ GeneratedBytes.matches($0, seed: c.seed, at: offset) }) else {
                    throw CatenaError(.checksumMismatch, "'\(key)' differs from what was stored within bytes \(offset)..<\(offset + UInt64(piece.readableBytes))")
                }
                offset += UInt64(piece.readableBytes)
            }
        } catch {
            throw (error as? CatenaError) ?? CatenaError(.unavailable, "\(error)")
        }
        guard offset == c.size else { throw CatenaError(.checksumMismatch, "'\(key)' read back \(offset) bytes, not \(c.size)") }
        let seconds = Self.seconds(ContinuousClock.now - start)
        var rng = SplitMix64(seed: c.seed ^ 0x5EED)
        for _ in 0..<c.rangedReads {
            let low = rng.next() % c.size
            let high = min(c.size, low + 1 + rng.next() % (4 << 20))
            let range = try await client.get(key, range: low..<high)
            guard range.bytes.withUnsafeBytes({ GeneratedBytes.matches($0, seed: c.seed, at: low) }) else {
                throw CatenaError(.checksumMismatch, "'\(key)' bytes \(low)..<\(high) differ from what was stored")
            }
        }
        return seconds
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    /// Resets this process's peak resident set size to its current one (Linux: `5` to
    /// /proc/self/clear_refs), so that the next reading is the peak of what follows.
    static func resetOwnPeak() {
        try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8)
    }

    /// This process's peak resident set size (VmHWM), from /proc.
    static func ownPeakResidentBytes() -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") else {
            return nil
        }
        return kib * 1024
    }
}

private func withThrowingTaskGroupOfParts(
    _ body: (inout ThrowingTaskGroup<UploadedPart, any Error>) -> Void
) async throws(CatenaError) -> [UploadedPart] {
    do {
        return try await withThrowingTaskGroup(of: UploadedPart.self) { group in
            body(&group)
            var parts: [UploadedPart] = []
            for try await part in group { parts.append(part) }
            return parts
        }
    } catch {
        throw (error as? CatenaError) ?? CatenaError(.unavailable, "\(error)")
    }
}

/// Pseudo-random bytes that any range of can be made again, cheaply (copies, not arithmetic,
/// so a debug build makes them fast too): 1 MiB of SplitMix64 output, and each 1 MiB block of
/// the object is that pool rotated by an amount drawn from the block's index. As pieces of up
/// to 1 MiB, for a streamed put.
struct GeneratedBytes: AsyncSequence, Sendable {
    typealias Element = [UInt8]
    static let block = 1 << 20
    let seed: UInt64
    let range: Range<UInt64>

    func makeAsyncIterator() -> Iterator { Iterator(seed: seed, next: range.lowerBound, end: range.upperBound) }

    struct Iterator: AsyncIteratorProtocol {
        let seed: UInt64
        var next: UInt64
        let end: UInt64

        mutating func next() async -> [UInt8]? {
            guard next < end else { return nil }
            let upTo = Swift.min(end, (next / UInt64(block) + 1) * UInt64(block))
            defer { next = upTo }
            return GeneratedBytes.bytes(seed: seed, range: next..<upTo)
        }
    }

    /// The pool of `seed` (made once per seed and kept).
    static func pool(_ seed: UInt64) -> [UInt8] {
        pools.withLock { pools in
            if let pool = pools[seed] { return pool }
            var rng = SplitMix64(seed: seed)
            var pool = [UInt8](repeating: 0, count: block)
            pool.withUnsafeMutableBytes { raw in
                for i in stride(from: 0, to: block, by: 8) { raw.storeBytes(of: rng.next(), toByteOffset: i, as: UInt64.self) }
            }
            pools[seed] = pool
            return pool
        }
    }
    private static let pools = Mutex([UInt64: [UInt8]]())

    /// Where block `index`'s bytes start in the pool.
    static func rotation(seed: UInt64, block index: UInt64) -> Int {
        var rng = SplitMix64(seed: seed ^ (index &* 0x9E37_79B9_7F4A_7C15))
        return Int(rng.next() % UInt64(block))
    }

    /// The bytes at `range`.
    static func bytes(seed: UInt64, range: Range<UInt64>) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(range.upperBound - range.lowerBound))
        write(seed: seed, range: range, into: &out)
        return out
    }

    static func write(seed: UInt64, range: Range<UInt64>, into out: inout [UInt8]) {
        let pool = pool(seed)
        var at = range.lowerBound
        out.withUnsafeMutableBytes { dst in
            pool.withUnsafeBytes { src in
                while at < range.upperBound {
                    let index = at / UInt64(block)
                    let within = Int(at % UInt64(block))
                    let n = Swift.min(block - within, Int(range.upperBound - at))
                    var from = (rotation(seed: seed, block: index) + within) % block
                    var to = Int(at - range.lowerBound)
                    var left = n
                    while left > 0 {
                        let take = Swift.min(left, block - from)
                        (dst.baseAddress! + to).copyMemory(from: src.baseAddress! + from, byteCount: take)
                        to += take
                        left -= take
                        from = 0
                    }
                    at += UInt64(n)
                }
            }
        }
    }

    /// Whether `bytes` are the bytes at `offset`.
    static func matches(_ bytes: UnsafeRawBufferPointer, seed: UInt64, at offset: UInt64) -> Bool {
        let expected = Self.bytes(seed: seed, range: offset..<offset + UInt64(bytes.count))
        return expected.withUnsafeBytes { memcmp($0.baseAddress!, bytes.baseAddress!, bytes.count) == 0 }
    }
}
