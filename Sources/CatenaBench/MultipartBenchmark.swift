import CatenaClient
import CatenaCluster
import CatenaCore
import Foundation

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
        /// How many parts, all stored at once (sharing the streamed put's chunk window: each
        /// keeps `chunkWindow / parts` chunks in flight, at least one).
        public var parts: Int = 8
        /// Ranged reads at random offsets per object.
        public var rangedReads: Int = 64
        /// Whether to store the object as one streamed put first (the comparison).
        public var streamedPut = true
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
        public var seconds: Double
        public var bytes: UInt64
        public var readSeconds: Double
        public var rangedReads: Int
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
            var configuration = CatenaClient.Configuration()
            configuration.requestTimeout = .seconds(120)
            let client = try await BenchCluster.clients(1, of: cluster, configuration: configuration)[0]
            // The parts share the streamed put's window: as many chunks in flight in all.
            configuration.chunkWindow = max(1, configuration.chunkWindow / c.parts)
            let partClient: CatenaClient
            do throws(CatenaError) {
                partClient = try await BenchCluster.clients(1, of: cluster, configuration: configuration)[0]
            } catch {
                await client.close()
                throw error
            }
            defer { Task { await partClient.close() } }
            var report = Report()
            do throws(CatenaError) {
                if c.streamedPut {
                    c.progress("storing \(c.size) bytes as one streamed put")
                    let start = ContinuousClock.now
                    try await client.put("bench/streamed", streaming: GeneratedBytes(seed: c.seed, range: 0..<c.size))
                    let seconds = Self.seconds(ContinuousClock.now - start)
                    let read = try await verify(client, "bench/streamed")
                    report.uploads.append(Upload(name: "streamed put", seconds: seconds, bytes: c.size, readSeconds: read, rangedReads: c.rangedReads))
                }
                c.progress("storing \(c.size) bytes as a multipart upload of \(c.parts) parts at once")
                let start = ContinuousClock.now
                let upload = try await partClient.createMultipartUpload("bench/multipart")
                let partSize = (c.size + UInt64(c.parts) - 1) / UInt64(c.parts)
                let stored = try await withThrowingTaskGroupOfParts { group in
                    for number in 1...c.parts {
                        let range = UInt64(number - 1) * partSize..<min(c.size, UInt64(number) * partSize)
                        group.addTask {
                            try await partClient.uploadPart(upload, number: number, streaming: GeneratedBytes(seed: c.seed, range: range))
                        }
                    }
                }
                try await partClient.completeMultipartUpload(upload, parts: stored.sorted { $0.number < $1.number })
                let seconds = Self.seconds(ContinuousClock.now - start)
                let read = try await verify(client, "bench/multipart")
                report.uploads.append(Upload(name: "multipart, \(c.parts) parts", seconds: seconds, bytes: c.size, readSeconds: read, rangedReads: c.rangedReads))
            } catch {
                await client.close()
                throw error
            }
            await client.close()
            await partClient.close()
            for name in ["master", "n1", "n2", "n3"] {
                if let bytes = cluster.peakResidentBytes(name) { report.peakResident.append((name, bytes)) }
            }
            if let own = Self.ownPeakResidentBytes() { report.peakResident.append(("client", own)) }
            return report
        }
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
                let expected = GeneratedBytes.bytes(seed: c.seed, range: offset..<offset + UInt64(piece.readableBytes))
                guard piece.readableBytesView.elementsEqual(expected) else {
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
            guard range.bytes.elementsEqual(GeneratedBytes.bytes(seed: c.seed, range: low..<high)) else {
                throw CatenaError(.checksumMismatch, "'\(key)' bytes \(low)..<\(high) differ from what was stored")
            }
        }
        return seconds
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
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

/// Pseudo-random bytes that any range of can be made again: each 64 KiB block from its own
/// SplitMix64 seed. As pieces of up to 1 MiB, for a streamed put.
struct GeneratedBytes: AsyncSequence, Sendable {
    typealias Element = [UInt8]
    static let block: UInt64 = 64 << 10
    let seed: UInt64
    let range: Range<UInt64>

    func makeAsyncIterator() -> Iterator { Iterator(seed: seed, next: range.lowerBound, end: range.upperBound) }

    struct Iterator: AsyncIteratorProtocol {
        let seed: UInt64
        var next: UInt64
        let end: UInt64

        mutating func next() async -> [UInt8]? {
            guard next < end else { return nil }
            let upTo = Swift.min(end, next + (1 << 20))
            defer { next = upTo }
            return GeneratedBytes.bytes(seed: seed, range: next..<upTo)
        }
    }

    /// The bytes at `range`.
    static func bytes(seed: UInt64, range: Range<UInt64>) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(range.upperBound - range.lowerBound))
        var at = range.lowerBound
        out.withUnsafeMutableBytes { raw in
            while at < range.upperBound {
                let blockIndex = at / block
                let blockStart = blockIndex * block
                var rng = SplitMix64(seed: seed &+ blockIndex &* 0x9E37_79B9_7F4A_7C15)
                // Words of the block before `at` are skipped (8 bytes each).
                let skipWords = (at - blockStart) / 8
                for _ in 0..<skipWords { _ = rng.next() }
                var position = blockStart + skipWords * 8
                let blockEnd = Swift.min(range.upperBound, blockStart + block)
                while position < blockEnd {
                    let word = rng.next()
                    if position >= at && position + 8 <= blockEnd {
                        raw.storeBytes(of: word.littleEndian, toByteOffset: Int(position - range.lowerBound), as: UInt64.self)
                    } else {
                        for b in 0..<8 {
                            let p = position + UInt64(b)
                            if p >= at && p < blockEnd { raw[Int(p - range.lowerBound)] = UInt8(truncatingIfNeeded: word >> (8 * UInt64(b))) }
                        }
                    }
                    position += 8
                }
                at = blockEnd
            }
        }
        return out
    }
}
