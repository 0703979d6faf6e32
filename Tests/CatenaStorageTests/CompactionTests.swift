import CatenaCore
import CatenaStorage
import CatenaTestSupport
import Testing

/// A deterministic history over a small key space: puts, overwrites, deletes.
private func history(seed: UInt64, count: Int, keys: Int) -> [EncodedRecord] {
    var rng = SplitMix64(seed: seed)
    return (1...count).map { i in
        let k = "key-\(Int.random(in: 0..<keys, using: &rng))"
        if Int.random(in: 0..<5, using: &rng) == 0 { return del(k, seq: UInt64(i)) }
        let size = Int.random(in: 1...300, using: &rng)
        return put(k, (0..<size).map { _ in UInt8.random(in: 0...255, using: &rng) }, seq: UInt64(i))
    }
}



/// These tests are about what compaction drops by the watermark; their records carry head
/// timestamps of a few nanoseconds, so they turn the request-id window off (`requestWindow =
/// .zero`). RequestWindowTests covers the window.
@Suite("Compaction")
struct CompactionTests {
    @Test(arguments: [1, 2, 3] as [UInt64])
    func keepsExactlyTheLiveData(seed: UInt64) async throws {
        let f = Fixture(configure: { $0.segmentSize = 8192; $0.requestWindow = .zero })
        let store = try await f.open()
        let records = history(seed: seed, count: 600, keys: 40)
        for chunk in stride(from: 0, to: records.count, by: 25) {
            try await store.append(Array(records[chunk..<min(chunk + 25, records.count)]))
        }
        try await store.setCommitWatermark(LSN(epoch: 1, seq: 600))
        let before = store.segments.reduce(0) { $0 + $1.byteSize }
        let report = try await store.compact()
        #expect(report.segmentsRewritten > 0 && report.recordsDropped > 0)
        let after = store.segments.reduce(0) { $0 + $1.byteSize }
        #expect(after < before)
        #expect(try await contents(store) == model(records))
        #expect(store.compactedThrough > .zero)
        // The active segment is untouched, so the log's end is unchanged.
        #expect(store.highestLSN == LSN(epoch: 1, seq: 600))
        await store.close()
        let reopened = try await f.open()
        #expect(try await contents(reopened) == model(records))
        // Appends continue after compaction.
        try await reopened.append([put("new", bytes("x"), seq: 601)])
        await reopened.close()
    }

    @Test func keepsEverythingAboveTheWatermarkSoTruncationStaysCorrect() async throws {
        let f = Fixture(configure: { $0.segmentSize = 4096; $0.requestWindow = .zero })
        let store = try await f.open()
        var seq: UInt64 = 0
        func next() -> UInt64 { seq += 1; return seq }
        for _ in 0..<30 { try await store.append([put("a", [UInt8](repeating: 1, count: 200), seq: next())]) }
        try await store.setCommitWatermark(LSN(epoch: 1, seq: 10))
        for _ in 0..<30 { try await store.append([put("a", [UInt8](repeating: 2, count: 200), seq: next())]) }
        try await store.compact()
        // Everything after the watermark (seq 11...60) must still be there.
        let kept = try await store.records(after: LSN(epoch: 1, seq: 10)).collect()
        #expect(kept.map(\.lsn.seq) == Array(11...60))
        // Truncating back to the watermark yields the value written at seq 10.
        try await store.truncate(after: LSN(epoch: 1, seq: 10))
        #expect(try await store.value("a") == [UInt8](repeating: 1, count: 200))
        #expect(store.highestLSN.seq == 10)
        // Asking for history that compaction dropped needs a full copy.
        #expect { try store.records(after: LSN(epoch: 1, seq: 2)) } throws: { ($0 as? CatenaError)?.code == .historyCompacted }
        _ = try store.records(after: .zero)
        await store.close()
    }

    @Test func tombstonesAreDroppedOnlyWithEveryOlderVersion() async throws {
        let f = Fixture(configure: { $0.segmentSize = 4096; $0.requestWindow = .zero })
        let store = try await f.open()
        var seq: UInt64 = 0
        func next() -> UInt64 { seq += 1; return seq }
        try await store.append([put("gone", [UInt8](repeating: 7, count: 500), seq: next())])
        for i in 0..<20 { try await store.append([put("filler\(i)", [UInt8](repeating: 1, count: 500), seq: next())]) }
        try await store.append([del("gone", seq: next())])
        for i in 0..<20 { try await store.append([put("filler\(i)", [UInt8](repeating: 2, count: 500), seq: next())]) }
        try await store.setCommitWatermark(store.highestLSN)
        try await store.compact()
        #expect(try await store.value("gone") == nil)
        let all = try await store.records(after: .zero).collect()
        #expect(!all.contains { $0.key.string == "gone" })
        await store.close()
        let reopened = try await f.open()
        #expect(try await reopened.value("gone") == nil)
        #expect(try reopened.allKeys().count == 20)
        await reopened.close()
    }

    /// Hold the compaction at its output's fsync: appends and reads complete meanwhile.
    @Test func readsAndAppendsContinueDuringCompaction() async throws {
        let gated = GatedFileSystem(wrapping: CrashSimulatingFileSystem())
        let f = Fixture(configure: { $0.segmentSize = 8192; $0.requestWindow = .zero; $0.fileSystem = gated })
        let store = try await f.open()
        let records = history(seed: 9, count: 400, keys: 30)
        for start in stride(from: 0, to: 300, by: 10) { try await store.append(Array(records[start..<(start + 10)])) }
        try await store.setCommitWatermark(LSN(epoch: 1, seq: 300))
        let gate = gated.holdNextSync(matching: ".seg.tmp")
        defer { gate.open() }
        let compaction = Task { try await store.compact() }
        #expect(await gate.waitUntilReached(timeout: .seconds(5)), "compaction never reached its output's fsync")
        // Compaction is stuck mid-rewrite: the store still takes appends and serves reads.
        for r in records[300...] { try await store.append([r]) }
        #expect(try await contents(store) == model(records))
        gate.open()
        let report = try await compaction.value
        #expect(report.segmentsRewritten > 0 && report.recordsDropped > 0)
        #expect(try await contents(store) == model(records))
        await store.close()
    }

    /// Cancelling a compaction stops it after the group it is rewriting (so a node shuts down
    /// without waiting for a long compaction); the store stays whole, and the next compaction
    /// does the rest.
    @Test func cancellingStopsAfterTheCurrentGroup() async throws {
        let gated = GatedFileSystem(wrapping: CrashSimulatingFileSystem())
        let f = Fixture(configure: { $0.segmentSize = 4096; $0.requestWindow = .zero; $0.fileSystem = gated })
        let store = try await f.open()
        // Keys written once (live) between overwrites of one key: every segment has dead records
        // and about half its bytes live, so a group (at most a segment's worth of live bytes)
        // holds only a few segments.
        var records: [EncodedRecord] = []
        for i in 1...160 {
            let k = i % 2 == 0 ? "hot" : "cold\(i)"
            records.append(put(k, [UInt8](repeating: UInt8(i % 251), count: 300), seq: UInt64(i)))
        }
        for r in records { try await store.append([r]) }
        try await store.setCommitWatermark(store.highestLSN)
        let sealed = store.sealedSegments.count
        try #require(sealed >= 8)

        let gate = gated.holdNextSync(matching: ".seg.tmp")
        defer { gate.open() }
        let compaction = Task { try await store.compact() }
        #expect(await gate.waitUntilReached(timeout: .seconds(5)), "compaction never reached its first output's fsync")
        compaction.cancel()
        gate.open()
        let first = try await compaction.value
        #expect(first.segmentsRewritten > 0, "the group in progress completes")
        #expect(first.segmentsRewritten < sealed - 1, "later groups were not started (\(first.segmentsRewritten) of \(sealed) rewritten)")
        #expect(try await contents(store) == model(records))

        let rest = try await store.compact()
        #expect(rest.segmentsRewritten > 0)
        #expect(try await contents(store) == model(records))
        await store.close()
    }

    /// Cut the power at every step of a compaction: reopening always yields exactly the live data.
    @Test func crashSafeAtEveryStep() async throws {
        let records = history(seed: 4, count: 300, keys: 25)
        func prepared() async throws -> (Fixture, Store) {
            let f = Fixture(configure: { $0.segmentSize = 8192; $0.requestWindow = .zero })
            let store = try await f.open()
            for start in stride(from: 0, to: records.count, by: 10) { try await store.append(Array(records[start..<(start + 10)])) }
            try await store.setCommitWatermark(LSN(epoch: 1, seq: 300))
            return (f, store)
        }
        // Count the mutating operations of one uninterrupted compaction.
        let (f0, s0) = try await prepared()
        let start = f0.fs.mutatingOperationCount
        try await s0.compact()
        let steps = f0.fs.mutatingOperationCount - start
        await s0.close()
        #expect(steps > 5)

        var rng = SplitMix64(seed: 1)
        for k in 0..<steps {
            let (f, store) = try await prepared()
            f.fs.failAfter(operations: k)
            _ = try? await store.compact()
            await store.close()
            f.fs.crash(tornWrites: true, using: &rng)
            let reopened = try await f.open()
            #expect(try await contents(reopened) == model(records), "cut after \(k) of \(steps) operations")
            #expect(reopened.highestLSN.seq == 300)
            await reopened.close()
        }
    }

    @Test func abandonedUploadsAreCollected() async throws {
        let clock = ManualClock(nanoseconds: 1_000_000_000_000)
        let f = Fixture(configure: {
            $0.segmentSize = 4096
            $0.requestWindow = .zero
            $0.abandonedUploadTimeout = .seconds(60)
            $0.now = { clock.now }
        })
        let store = try await f.open()
        let upload = RequestID(high: 1, low: 1)
        var seq: UInt64 = 0
        func next() -> UInt64 { seq += 1; return seq }
        for i in 0..<3 {
            try await store.append([chunk("big", upload: upload, index: UInt32(i), value: [UInt8](repeating: UInt8(i), count: 1000), seq: next(), timestamp: clock.now)])
        }
        for i in 0..<20 { try await store.append([put("f\(i)", [UInt8](repeating: 0, count: 400), seq: next())]) }
        try await store.setCommitWatermark(store.highestLSN)
        // Not abandoned yet: kept.
        try await store.compact()
        #expect(try await store.records(after: .zero).collect().filter { $0.type == .chunk }.count == 3)
        clock.advance(seconds: 61)
        try await store.compact()
        #expect(try await store.records(after: .zero).collect().filter { $0.type == .chunk }.isEmpty)
        // The manifest can no longer complete it.
        let manifest = Manifest(upload: upload, chunkCount: 3, totalSize: 3000)
        #expect { try store.enqueue([try Record(type: .manifest, key: key("big"), lsn: LSN(epoch: 1, seq: next()), value: manifest.encoded()).encoded()]) } throws: {
            ($0 as? CatenaError)?.code == .incompleteUpload
        }
        await store.close()
    }
}

func chunk(_ k: String, upload: UploadID, index: UInt32, value: [UInt8], seq: UInt64, timestamp: UInt64 = 0) -> EncodedRecord {
    var r = Record(type: .chunk, key: key(k), lsn: LSN(epoch: 1, seq: seq), timestamp: timestamp, value: value)
    r.chunkAddress = ChunkAddress(upload: upload, index: index)
    return try! r.encoded()
}

/// A settable wall clock for upload garbage collection.
final class ManualClock: Sendable {
    private let value: Mutex<UInt64>
    init(nanoseconds: UInt64) { value = Mutex(nanoseconds) }
    var now: UInt64 { value.withLock { $0 } }
    func advance(seconds: UInt64) { value.withLock { $0 += seconds * 1_000_000_000 } }
}

import Synchronization
