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
