import CatenaCore
import CatenaStorage
import CatenaTestSupport
import Testing

/// A head timestamp: `seconds` after an arbitrary moment, in ns since 1970.
private func at(_ seconds: Double) -> UInt64 {
    1_700_000_000_000_000_000 + UInt64(seconds * 1e9)
}

private func id(_ n: UInt64) -> RequestID { RequestID(high: 0xC0FFEE, low: n) }

/// Builds a log one record at a time: contiguous seqs, head timestamps chosen by the test,
/// request id = seq.
private final class LogWriter {
    let store: Store
    private(set) var seq: UInt64
    private(set) var written: [EncodedRecord] = []

    init(_ store: Store, after: UInt64 = 0) {
        self.store = store
        self.seq = after
    }

    @discardableResult
    func put(_ k: String, _ value: [UInt8], time: Double, epoch: UInt64 = 1) async throws -> EncodedRecord {
        seq += 1
        return try await append(CatenaStorageTests.put(k, value, seq: seq, epoch: epoch, requestID: id(seq), timestamp: at(time)))
    }

    @discardableResult
    func delete(_ k: String, time: Double) async throws -> EncodedRecord {
        seq += 1
        return try await append(del(k, seq: seq, requestID: id(seq), timestamp: at(time)))
    }

    @discardableResult
    func fence(_ k: String, time: Double) async throws -> EncodedRecord {
        seq += 1
        return try await append(try Record(type: .fence, key: key(k), lsn: LSN(epoch: 1, seq: seq), timestamp: at(time), requestID: id(seq)).encoded())
    }

    @discardableResult
    func upload(_ k: String, chunks: Int, chunkSize: Int, time: Double, step: Double = 0.01) async throws -> [EncodedRecord] {
        let upload = RequestID(high: 0xAB, low: seq)
        var out: [EncodedRecord] = []
        var object: [UInt8] = []
        for i in 0..<chunks {
            seq += 1
            let piece = [UInt8](repeating: UInt8(truncatingIfNeeded: i &+ 1), count: chunkSize)
            object += piece
            var r = Record(type: .chunk, key: key(k), lsn: LSN(epoch: 1, seq: seq), timestamp: at(time + Double(i) * step),
                           requestID: id(seq), value: piece)
            r.chunkAddress = ChunkAddress(upload: upload, index: UInt32(i))
            out.append(try await append(try r.encoded()))
        }
        seq += 1
        let manifest = Record(type: .manifest, key: key(k), lsn: LSN(epoch: 1, seq: seq), timestamp: at(time + Double(chunks) * step),
                              requestID: id(seq), contentChecksum: XXH3.hash(object),
                              value: Manifest(upload: upload, chunkCount: UInt32(chunks), totalSize: UInt64(object.count)).encoded())
        out.append(try await append(try manifest.encoded()))
        return out
    }

    private func append(_ r: EncodedRecord) async throws -> EncodedRecord {
        try await store.append([r])
        written.append(r)
        return r
    }
}

/// What `recentRequests(window:)` must return for `records` (the log, in order).
private func expectedRecent(_ records: [EncodedRecord], window: Double) -> [RecentRequest] {
    guard let anchor = records.last?.header.timestamp else { return [] }
    let width = UInt64(window * 1e9)
    return records.filter { r in
        r.header.requestID != .none && (anchor > r.header.timestamp ? anchor - r.header.timestamp : 0) < width
    }.map { RecentRequest(requestID: $0.header.requestID, lsn: $0.lsn, timestamp: $0.header.timestamp, fence: $0.type == .fence) }
}

/// The request-id window: `Store.recentRequests(window:)` and what compaction keeps for it.
@Suite("Request-id window")
struct RequestWindowTests {
    /// A small write, then a large upload: today's node rebuilds its request table from the
    /// log's last 256 MiB (or 100,000 records), so a 300 MiB upload pushes the small write out
    /// and its retry after a restart is applied twice. The window is by time, and reading it
    /// costs no value reads whatever the objects' sizes (here: not one byte of a segment).
    @Test func theWindowSurvivesALargeUploadAndReadsNoValues() async throws {
        let f = Fixture(configure: { $0.segmentSize = 2 << 20 })
        let store = try await f.open()
        let log = LogWriter(store)
        let small = try await log.put("small", bytes("v"), time: 0)
        try await log.upload("big", chunks: 12, chunkSize: 1 << 20, time: 1)
        try await log.put("after", bytes("w"), time: 2)
        #expect(store.sealedSegments.count >= 5)
        await store.close()

        // A restart.
        let reopened = try await f.open()
        let segmentBytesBefore = f.fs.bytesRead(fromPathsEndingWith: ".seg") + f.fs.bytesRead(fromPathsEndingWith: ".seg.tmp")
        let recent = try await reopened.recentRequests(window: .seconds(60))
        let segmentBytesRead = f.fs.bytesRead(fromPathsEndingWith: ".seg") + f.fs.bytesRead(fromPathsEndingWith: ".seg.tmp") - segmentBytesBefore
        #expect(recent == expectedRecent(log.written, window: 60))
        #expect(recent.first?.requestID == small.header.requestID && recent.first?.lsn == small.lsn)
        #expect(recent.count == 15)
        #expect(segmentBytesRead == 0, "recentRequests read \(segmentBytesRead) bytes of segments")
        await reopened.close()
    }

    /// Exactly the records less than the window older than the log's last record; segments
    /// entirely before the window are not read.
    @Test func theWindowIsMeasuredFromTheLogsLastRecord() async throws {
        let f = Fixture(configure: { $0.segmentSize = 4096 })
        let store = try await f.open()
        let log = LogWriter(store)
        for i in 0..<120 { try await log.put("k\(i % 9)", [UInt8](repeating: 1, count: 300), time: Double(i)) }
        let hintBytes = try f.fs.contentsOfDirectory("/data/n1").filter { $0.hasSuffix(".hint") }
            .reduce(0) { $0 + (f.fs.contents(of: "/data/n1/" + $1)?.count ?? 0) }
        let hintsBefore = f.fs.bytesRead(fromPathsEndingWith: ".hint")
        let recent = try await store.recentRequests(window: .seconds(10))
        #expect(recent.map(\.lsn.seq) == Array(111...120), "timestamps 110 s ... 119 s are less than 10 s older than 119 s")
        #expect(recent == expectedRecent(log.written, window: 10))
        #expect(f.fs.bytesRead(fromPathsEndingWith: ".hint") - hintsBefore < hintBytes / 4, "hints of segments before the window were read")
        #expect(try await store.recentRequests(window: .zero).isEmpty)
        #expect(try await store.recentRequests(window: .seconds(1000)).count == 120)
        // An empty log has no recent requests.
        let empty = try await Fixture(directory: "/data/empty").open()
        #expect(try await empty.recentRequests(window: .seconds(60)).isEmpty)
        await empty.close()
        await store.close()
    }

    /// A fence (a write settled as not applied) is no version of its key: reads and listings do
    /// not see it, the window brings it back marked as a fence, and compaction keeps it exactly
    /// as long as the window holds it.
    @Test func aFenceLivesAsLongAsTheWindow() async throws {
        let f = Fixture(configure: { $0.segmentSize = 4096 })
        let store = try await f.open()
        let log = LogWriter(store)
        try await log.put("k", bytes("v"), time: 0)
        let fence = try await log.fence("k", time: 1)
        try await log.fence("never-written", time: 1)
        #expect(try await store.value("k") == bytes("v"))
        #expect(try store.head(try Key("never-written")) == nil)
        #expect(try store.list().objects.map(\.key.string) == ["k"])
        let recent = try await store.recentRequests(window: .seconds(60))
        #expect(recent.first { $0.requestID == fence.header.requestID }?.fence == true)
        #expect(recent == expectedRecent(log.written, window: 60))
        for i in 0..<20 { try await log.put("filler\(i % 4)", [UInt8](repeating: 2, count: 400), time: 2 + Double(i) * 0.1) }
        try await store.setCommitWatermark(store.highestLSN)
        _ = try await store.compact()
        #expect(try await store.records(after: .zero).collect().contains { $0.lsn == fence.lsn }, "inside the window: kept")
        for i in 0..<30 { try await log.put("later\(i % 3)", [UInt8](repeating: 3, count: 400), time: 120 + Double(i) * 0.1) }
        try await store.setCommitWatermark(store.highestLSN)
        _ = try await store.compact()
        #expect(!(try await store.records(after: .zero).collect().contains { $0.type == .fence }), "outside the window: dropped")
        #expect(try await store.value("k") == bytes("v"))
        await store.close()
    }

    /// Compaction used to drop a superseded record whatever its age: a retry of that write after
    /// a restart was then applied again and overwrote the newer value. Records inside the
    /// window now survive compaction; once the log has moved on past the window they go.
    @Test func compactionKeepsTheWindowsRecords() async throws {
        let f = Fixture(configure: { $0.segmentSize = 4096 })
        let store = try await f.open()
        let log = LogWriter(store)
        let first = try await log.put("k", bytes("first"), time: 0)
        try await log.put("k", bytes("second"), time: 1)
        try await log.put("gone", bytes("x"), time: 1)
        try await log.delete("gone", time: 2)
        for i in 0..<40 { try await log.put("filler\(i % 4)", [UInt8](repeating: 2, count: 400), time: 2 + Double(i) * 0.1) }
        try await store.setCommitWatermark(store.highestLSN)
        let report = try await store.compact()
        #expect(report.recordsDropped == 0, "every record is inside the 60 s window")
        let kept = try await store.records(after: .zero).collect()
        #expect(kept.map(\.lsn) == log.written.map(\.lsn))
        #expect(try await store.recentRequests(window: .seconds(60)).contains { $0.requestID == first.header.requestID && $0.lsn == first.lsn })

        // Two minutes later (by head timestamps) the same records are outside the window.
        for i in 0..<30 { try await log.put("later\(i % 3)", [UInt8](repeating: 3, count: 400), time: 120 + Double(i) * 0.1) }
        try await store.setCommitWatermark(store.highestLSN)
        let later = try await store.compact()
        #expect(later.recordsDropped > 0)
        let after = try await store.records(after: .zero).collect()
        #expect(!after.contains { $0.lsn == first.lsn }, "the superseded first version went")
        #expect(!after.contains { $0.key.string == "gone" }, "the tombstone and its older version went")
        #expect(try await store.value("k") == bytes("second"))
        let recent = try await store.recentRequests(window: .seconds(60))
        #expect(recent == expectedRecent(log.written, window: 60))
        #expect(recent.allSatisfy { $0.timestamp >= at(120) })
        await store.close()
    }

    /// A manifest inside the window keeps its (older) chunks, even once superseded: a manifest
    /// without its chunks would make a full copy of the log fail (incomplete upload).
    @Test func aKeptManifestKeepsItsChunksAndAFullCopyHasTheSameWindow() async throws {
        let f = Fixture(configure: { $0.segmentSize = 8192 })
        let store = try await f.open()
        let log = LogWriter(store)
        for i in 0..<30 { try await log.put("f\(i % 5)", [UInt8](repeating: 4, count: 300), time: Double(i) * 0.5) }
        try await log.upload("big", chunks: 6, chunkSize: 2000, time: 15, step: 3)   // chunks at 15 ... 30 s, manifest at 33 s
        try await log.put("big", bytes("small now"), time: 40)
        try await log.put("end", bytes("e"), time: 80)
        // Anchor 80 s: the superseded manifest (33 s) is inside the 60 s window, its first
        // chunks (15 s, 18 s) are not.
        try await store.setCommitWatermark(store.highestLSN)
        let report = try await store.compact()
        #expect(report.recordsDropped > 0, "the superseded filler values outside the window go")
        let kept = try await store.records(after: .zero).collect()
        #expect(kept.filter { $0.type == .chunk }.count == 6, "the chunks of the kept manifest stay")
        #expect(kept.contains { $0.type == .manifest })

        // A full copy (catch-up after compaction) installs exactly what was kept ...
        let copy = try await Fixture(fs: f.fs, directory: "/data/copy", configure: { $0.segmentSize = 8192 }).open()
        try await copy.enqueue(kept, allowingGaps: true).durable()
        #expect(try await copy.records(after: .zero).collect().map(\.bytes) == kept.map(\.bytes))
        // ... so the joiner's table, rebuilt from its own log, knows the same requests.
        let sourceRecent = try await store.recentRequests(window: .seconds(60))
        #expect(try await copy.recentRequests(window: .seconds(60)) == sourceRecent)
        #expect(sourceRecent == expectedRecent(log.written, window: 60))
        await copy.close()
        await store.close()
    }

    /// After power cuts (hint files are not fsynced, so they may be lost and the segments
    /// scanned) every acknowledged write's id is found; and with a hint file removed under a
    /// running store, the segment is scanned instead.
    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func theWindowSurvivesACrash(seed: UInt64) async throws {
        let f = Fixture(configure: { $0.segmentSize = 4096 })
        let store = try await f.open()
        let log = LogWriter(store)
        var rng = SplitMix64(seed: seed)
        for i in 0..<80 {
            try await log.put("k\(Int.random(in: 0..<10, using: &rng))", [UInt8](repeating: UInt8(i), count: Int.random(in: 10...400, using: &rng)),
                              time: Double(i) * 0.5)
        }
        // Unacknowledged appends in flight when the power goes.
        f.fs.failAfter(operations: Int.random(in: 0...3, using: &rng))
        let lost = (81...84).map { put("late", bytes("x"), seq: UInt64($0), requestID: id(UInt64($0)), timestamp: at(41)) }
        _ = try? store.enqueue(lost)
        await store.close()
        f.fs.crash(tornWrites: true, using: &rng)

        let reopened = try await f.open()
        let survivors = try await reopened.records(after: .zero).collect()
        #expect(survivors.count >= 80)
        #expect(Array(survivors.prefix(80)).map(\.bytes) == log.written.map(\.bytes))
        let recent = try await reopened.recentRequests(window: .seconds(30))
        #expect(recent == expectedRecent(survivors, window: 30))
        #expect(recent.count >= 55)

        // A sealed segment whose hint file is gone is scanned.
        let sealed = try #require(reopened.sealedSegments.last)
        let name = String(repeating: "0", count: 20 - String(sealed.id).count) + String(sealed.id)
        try f.fs.remove("/data/n1/\(name).hint")
        #expect(try await reopened.recentRequests(window: .seconds(30)) == recent)
        await reopened.close()
    }

    /// Truncated records are gone from the window; the next epoch's are in it.
    @Test func truncationRemovesItsRecordsFromTheWindow() async throws {
        let f = Fixture(configure: { $0.segmentSize = 4096 })
        let store = try await f.open()
        let log = LogWriter(store)
        for i in 0..<50 { try await log.put("k\(i % 6)", [UInt8](repeating: 1, count: 300), time: Double(i)) }
        try await store.setCommitWatermark(LSN(epoch: 1, seq: 30))
        try await store.truncate(after: LSN(epoch: 1, seq: 35))
        let next = LogWriter(store, after: 35)
        for i in 0..<3 { try await next.put("n\(i)", bytes("new"), time: 36 + Double(i), epoch: 2) }
        let recent = try await store.recentRequests(window: .seconds(20))
        let log2 = Array(log.written.prefix(35)) + next.written
        #expect(recent == expectedRecent(log2, window: 20))
        #expect(recent.map(\.lsn.seq) == Array(20...38), "seq s < 36 has timestamp s - 1 s")
        #expect(recent.suffix(3).allSatisfy { $0.lsn.epoch == 2 })
        await store.close()
    }

    /// The garbage estimate: superseded versions and tombstones per sealed segment, kept through
    /// reopen and truncation (both rebuild the index) and recounted by compaction; collectable
    /// only at or below the watermark and outside the window.
    @Test func theGarbageEstimateFollowsTheLog() async throws {
        let f = Fixture(configure: { $0.segmentSize = 4096; $0.requestWindow = .seconds(10) })
        let store = try await f.open()
        let log = LogWriter(store)
        var rng = SplitMix64(seed: 7)
        for i in 0..<150 {
            if Int.random(in: 0..<6, using: &rng) == 0 {
                try await log.delete("k\(Int.random(in: 0..<12, using: &rng))", time: Double(i) * 0.2)
            } else {
                try await log.put("k\(Int.random(in: 0..<12, using: &rng))", [UInt8](repeating: 1, count: Int.random(in: 50...300, using: &rng)),
                                  time: Double(i) * 0.2)
            }
        }

        /// Superseded versions and tombstones in sealed segments, from the records themselves.
        func expectedGarbage(_ s: Store) async throws -> UInt64 {
            let all = try await s.records(after: .zero).collect()
            var newest: [String: LSN] = [:]
            for r in all { newest[r.key.string] = r.lsn }
            var bytes: UInt64 = 0
            for segment in s.sealedSegments {
                for r in try await s.records(inSegment: segment.id).collect() where r.type == .delete || newest[r.key.string] != r.lsn {
                    bytes += UInt64(r.count)
                }
            }
            return bytes
        }
        let garbage = store.garbage
        #expect(garbage.garbageBytes == (try await expectedGarbage(store)))
        #expect(garbage.garbageBytes > 0 && garbage.sealedBytes >= garbage.garbageBytes)
        #expect(garbage.collectableBytes == 0, "nothing is collectable below a zero watermark")

        try await store.setCommitWatermark(store.highestLSN)
        let collectable = store.garbage.collectableBytes
        #expect(collectable > 0, "segments older than 10 s before the last record hold collectable garbage")
        #expect(collectable < store.garbage.garbageBytes, "the segments inside the window do not count")

        await store.close()
        let reopened = try await f.open()
        #expect(reopened.garbage == garbage.withCollectable(collectable), "start-up rebuilds the same estimate")

        let report = try await reopened.compact()
        #expect(report.recordsDropped > 0)
        let after = reopened.garbage
        #expect(after.garbageBytes == (try await expectedGarbage(reopened)), "compaction recounts its outputs")
        #expect(after.collectableBytes < collectable / 4, "what was collectable is gone: \(after)")

        let cut = try await reopened.truncate(after: reopened.highestLSN)
        #expect(cut == 0)
        #expect(reopened.garbage == after, "a truncation rebuilds the same estimate")
        await reopened.close()
    }
}

extension GarbageReport {
    fileprivate func withCollectable(_ bytes: UInt64) -> GarbageReport {
        var r = self
        r.collectableBytes = bytes
        return r
    }
}
