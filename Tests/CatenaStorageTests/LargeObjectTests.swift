import CatenaCore
import CatenaStorage
import CatenaTestSupport
import Testing

@Suite("Large objects")
struct LargeObjectTests {
    @Test func chunkedObjectBecomesVisibleOnlyWithItsManifest() async throws {
        let f = Fixture(configure: { $0.maxValueSize = 64 << 10; $0.segmentSize = 256 << 10 })
        let store = try await f.open()
        var rng = SplitMix64(seed: 5)
        let object = (0..<(1 << 20) + 12345).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let upload = RequestID(high: 9, low: 9)
        let pieces = stride(from: 0, to: object.count, by: 64 << 10).map { Array(object[$0..<min($0 + (64 << 10), object.count)]) }
        var seq: UInt64 = 0
        for (i, piece) in pieces.enumerated() {
            seq += 1
            try await store.append([chunk("big", upload: upload, index: UInt32(i), value: piece, seq: seq)])
            #expect(try store.head(key("big")) == nil)
        }
        seq += 1
        var manifestRecord = Record(
            type: .manifest, key: key("big"), lsn: LSN(epoch: 1, seq: seq),
            contentChecksum: XXH3.hash(object),
            value: Manifest(upload: upload, chunkCount: UInt32(pieces.count), totalSize: UInt64(object.count)).encoded())
        manifestRecord.contentType = "application/octet-stream"
        try await store.append([try manifestRecord.encoded()])
        let info = try #require(try store.head(key("big")))
        #expect(info.size == UInt64(object.count))
        #expect(info.chunkCount == pieces.count)
        #expect(info.contentType == "application/octet-stream")
        #expect(try await store.value("big") == object)
        await store.close()
        let reopened = try await f.open()
        #expect(try await reopened.value("big") == object)
        await reopened.close()
    }

    @Test func manifestWithoutAllChunksIsRefused() async throws {
        let store = try await Fixture().open()
        let upload = RequestID(high: 1, low: 2)
        try await store.append([chunk("x", upload: upload, index: 0, value: [1, 2, 3], seq: 1)])
        let bad = Manifest(upload: upload, chunkCount: 2, totalSize: 6)
        #expect { try store.enqueue([try Record(type: .manifest, key: key("x"), lsn: LSN(epoch: 1, seq: 2), value: bad.encoded()).encoded()]) } throws: {
            ($0 as? CatenaError)?.code == .incompleteUpload
        }
        #expect(try store.head(key("x")) == nil)
        // A chunk for another key under the same upload is refused too.
        #expect { try store.enqueue([chunk("y", upload: upload, index: 1, value: [4], seq: 2)]) } throws: {
            ($0 as? CatenaError)?.code == .invalidArgument
        }
        await store.close()
    }

    @Test func wrongContentChecksumIsCaughtByTheReader() async throws {
        let store = try await Fixture().open()
        let r = Record(type: .put, key: key("k"), lsn: LSN(epoch: 1, seq: 1), contentChecksum: 12345, value: bytes("hello"))
        try await store.append([try r.encoded()])
        let object = try #require(try store.get(key("k")))
        await #expect { _ = try await object.bytes() } throws: { ($0 as? CatenaError)?.code == .checksumMismatch }
        await store.close()
    }

    @Test func largeSingleRecordStreamsInPieces() async throws {
        let store = try await Fixture(configure: { $0.maxValueSize = 16 << 20 }).open()
        var value = [UInt8](repeating: 0, count: 9 << 20)
        value.withUnsafeMutableBufferPointer { p in
            for i in stride(from: 0, to: p.count, by: 4093) { p[i] = UInt8(truncatingIfNeeded: i / 4093 &* 31 &+ 1) }
        }
        try await store.append([put("v", value, seq: 1)])
        let object = try #require(try store.get(key("v")))
        var pieces = 0
        var out: [UInt8] = []
        for try await piece in object.body {
            pieces += 1
            #expect(piece.count <= 1 << 20)
            out += piece
        }
        #expect(pieces >= 9)
        #expect(out == value)
        await store.close()
    }
}

@Suite("Ranged reads")
struct RangedReadTests {
    /// A chunked object of 64 KiB chunks and a single 9 MiB record, read at seeded random
    /// ranges and at the edges; each read must equal the slice of the object.
    @Test func rangesOfChunkedAndSingleRecordObjectsMatchTheirSlices() async throws {
        let f = Fixture(configure: { $0.maxValueSize = 16 << 20 })
        let store = try await f.open()
        var rng = SplitMix64(seed: 17)
        let chunked = (0..<(1 << 20) + 12345).map { _ in UInt8.random(in: 0...255, using: &rng) }
        try await Self.appendChunked(chunked, as: "chunked", chunk: 64 << 10, to: store, firstSeq: 1)
        let single = (0..<(9 << 20)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        try await store.append([put("single", single, seq: 19)])

        for (name, object) in [("chunked", chunked), ("single", single)] {
            let size = UInt64(object.count)
            var ranges: [Range<UInt64>] = [0..<0, 0..<1, 0..<size, size..<size, size - 1..<size, 65535..<65537, 0..<(size + 100)]
            for _ in 0..<40 {
                let a = UInt64.random(in: 0...size, using: &rng)
                let b = UInt64.random(in: a...min(size, a + 3 << 20), using: &rng)
                ranges.append(a..<b)
            }
            for range in ranges {
                let got = try await Self.read(store, name, range)
                let end = Int(min(range.upperBound, size))
                #expect(got == Array(object[Int(range.lowerBound)..<end]), "\(name) \(range)")
            }
            #expect { try store.get(key(name), range: (size + 1)..<(size + 2)) } throws: { ($0 as? CatenaError)?.code == .invalidArgument }
        }
        await store.close()
    }

    /// A ranged read verifies every record it serves bytes of, and reads no other record's
    /// value: a damaged chunk fails the ranges that reach into it and no other.
    @Test func aDamagedChunkFailsOnlyTheRangesThatReachIntoIt() async throws {
        let fs = CrashSimulatingFileSystem()
        let store = try await Fixture(fs: fs).open()
        var rng = SplitMix64(seed: 18)
        let object = (0..<(4 * 65536)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        try await Self.appendChunked(object, as: "damaged", chunk: 64 << 10, to: store, firstSeq: 1)
        // Damage the third chunk's value, found by its first bytes.
        let segment = try #require(try fs.contentsOfDirectory("/data/n1").filter { $0.hasSuffix(".seg") }.sorted().first)
        let contents = try #require(fs.contents(of: "/data/n1/" + segment))
        let marker = Array(object[2 * 65536..<(2 * 65536 + 32)])
        let at = try #require(Self.offset(of: marker, in: contents))
        fs.corrupt(path: "/data/n1/" + segment, at: at + 1000, with: [contents[at + 1000] ^ 0x5A])

        #expect(try await Self.read(store, "damaged", 0..<(2 * 65536)) == Array(object[0..<(2 * 65536)]))
        #expect(try await Self.read(store, "damaged", (3 * 65536)..<(4 * 65536)) == Array(object[(3 * 65536)...]))
        await #expect { _ = try await Self.read(store, "damaged", (2 * 65536 + 5000)..<(2 * 65536 + 5001)) } throws: {
            ($0 as? CatenaError)?.code == .checksumMismatch
        }
        await #expect { _ = try await Self.read(store, "damaged", 100..<(3 * 65536)) } throws: { ($0 as? CatenaError)?.code == .checksumMismatch }
        await store.close()
    }

    static func read(_ store: Store, _ name: String, _ range: Range<UInt64>) async throws -> [UInt8] {
        let object = try #require(try store.get(key(name), range: range))
        var out: [UInt8] = []
        var pieces = object.body.makeAsyncIterator()
        while let piece = try await pieces.nextPiece() { out += piece }
        return out
    }

    static func appendChunked(_ object: [UInt8], as name: String, chunk chunkSize: Int, to store: Store, firstSeq: UInt64) async throws {
        let upload = RequestID(high: firstSeq, low: 77)
        let pieces = stride(from: 0, to: object.count, by: chunkSize).map { Array(object[$0..<min($0 + chunkSize, object.count)]) }
        var seq = firstSeq
        for (i, piece) in pieces.enumerated() {
            try await store.append([chunk(name, upload: upload, index: UInt32(i), value: piece, seq: seq)])
            seq += 1
        }
        let manifest = Record(type: .manifest, key: key(name), lsn: LSN(epoch: 1, seq: seq), contentChecksum: XXH3.hash(object),
                              value: Manifest(upload: upload, chunkCount: UInt32(pieces.count), totalSize: UInt64(object.count)).encoded())
        try await store.append([try manifest.encoded()])
    }

    static func offset(of needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard needle.count <= haystack.count else { return nil }
        for i in 0...(haystack.count - needle.count) where haystack[i] == needle[0] && Array(haystack[i..<(i + needle.count)]) == needle {
            return i
        }
        return nil
    }
}
