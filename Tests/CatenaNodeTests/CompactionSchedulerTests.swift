import CatenaClusterTestSupport
import CatenaCore
import CatenaNetwork
import CatenaNode
import CatenaStorage
import CatenaTestSupport
import Foundation
import Synchronization
import Testing

private func lsn(_ seq: UInt64) -> LSN { LSN(epoch: 1, seq: seq) }

private func observation(_ seconds: Int, acknowledged: UInt64, durable: UInt64, watermark: UInt64,
                         sealed: UInt64 = 0, collectable: UInt64 = 0) -> CompactionPolicy.Observation {
    CompactionPolicy.Observation(now: .seconds(seconds), acknowledged: lsn(acknowledged), durable: lsn(durable), watermark: lsn(watermark),
                                 garbage: GarbageReport(sealedBytes: sealed, garbageBytes: collectable, collectableBytes: collectable))
}

/// `CompactionPolicy` as transcripts: observation in, actions out.
@Suite("Compaction policy")
struct CompactionPolicyTests {
    static var settings: CompactionSettings {
        var s = CompactionSettings()
        s.watermarkInterval = .seconds(5)
        s.garbageRatio = 0.5
        s.minimumGarbageBytes = 100
        return s
    }

    @Test func theWatermarkIsRaisedAtMostEveryIntervalNeverPastWhatIsDurableNeverBack() {
        var p = CompactionPolicy(settings: Self.settings)
        #expect(p.tick(observation(0, acknowledged: 10, durable: 12, watermark: 0)) == [.raiseWatermark(lsn(10))])
        #expect(p.tick(observation(1, acknowledged: 20, durable: 20, watermark: 10)) == [], "not due before 5 s")
        #expect(p.tick(observation(5, acknowledged: 30, durable: 25, watermark: 10)) == [], "never above the durable log")
        #expect(p.tick(observation(5, acknowledged: 25, durable: 25, watermark: 10)) == [.raiseWatermark(lsn(25))])
        #expect(p.tick(observation(11, acknowledged: 25, durable: 30, watermark: 25)) == [], "nothing new")
        #expect(p.tick(observation(12, acknowledged: 20, durable: 30, watermark: 25)) == [], "a fresh replica machine acknowledges less: never back")
        #expect(p.tick(observation(13, acknowledged: 26, durable: 30, watermark: 25)) == [.raiseWatermark(lsn(26))])
        // Stopping: one last raise at once, and no compaction, whatever the garbage.
        #expect(p.tick(observation(14, acknowledged: 30, durable: 30, watermark: 26, sealed: 1000, collectable: 900), final: true)
                == [.raiseWatermark(lsn(30))])
    }

    @Test func compactionRunsByGarbageRatioAndNotAgainUntilNewGarbageAccumulates() {
        var p = CompactionPolicy(settings: Self.settings)
        #expect(p.tick(observation(0, acknowledged: 0, durable: 9, watermark: 0, sealed: 1000, collectable: 400)) == [], "ratio 0.4")
        #expect(p.tick(observation(1, acknowledged: 0, durable: 9, watermark: 0, sealed: 1000, collectable: 500)) == [.compact])
        #expect(p.tick(observation(2, acknowledged: 0, durable: 9, watermark: 0, sealed: 1000, collectable: 600)) == [], "one at a time")
        // It could not drop 450 bytes (a tombstone whose older version lies elsewhere, say).
        p.compactionFinished(leaving: 450)
        #expect(p.tick(observation(3, acknowledged: 0, durable: 9, watermark: 0, sealed: 1000, collectable: 520)) == [],
                "70 new bytes are below the 100-byte minimum: no compaction loop over garbage it cannot reach")
        #expect(p.tick(observation(4, acknowledged: 0, durable: 9, watermark: 0, sealed: 1000, collectable: 560)) == [.compact])
        p.compactionFinished(leaving: 0)
        #expect(p.tick(observation(5, acknowledged: 0, durable: 9, watermark: 0, sealed: 150, collectable: 90)) == [],
                "ratio 0.6, but less than the minimum")
        #expect(p.tick(observation(6, acknowledged: 0, durable: 9, watermark: 0, sealed: 0, collectable: 0)) == [], "no sealed segment")
    }

    @Test func garbageCollectedByAnotherCompactionCountsAgain() {
        var p = CompactionPolicy(settings: Self.settings)
        #expect(p.tick(observation(0, acknowledged: 0, durable: 9, watermark: 0, sealed: 1000, collectable: 800)) == [.compact])
        p.compactionFinished(leaving: 700)
        // An operator's compaction collected it meanwhile; new garbage counts from there.
        #expect(p.tick(observation(1, acknowledged: 0, durable: 9, watermark: 0, sealed: 400, collectable: 0)) == [])
        #expect(p.tick(observation(2, acknowledged: 0, durable: 9, watermark: 0, sealed: 400, collectable: 200)) == [.compact])
    }

    @Test func withoutARatioItNeverCompacts() {
        var settings = Self.settings
        settings.garbageRatio = nil
        var p = CompactionPolicy(settings: settings)
        #expect(p.tick(observation(0, acknowledged: 5, durable: 9, watermark: 0, sealed: 1000, collectable: 1000)) == [.raiseWatermark(lsn(5))])
        #expect(settings.problem == nil)
        settings.garbageRatio = 1.5
        #expect(settings.problem != nil)
    }
}

/// A settable acknowledged LSN: what the replica would report.
private final class Acknowledged: Sendable {
    private let value = Mutex(LSN.zero)
    var lsn: LSN {
        get { value.withLock { $0 } }
        set { value.withLock { $0 = newValue } }
    }
}

/// The scheduler over a real store (crash-simulating file system), ticked by the test.
@Suite("Compaction scheduler")
struct CompactionSchedulerTests {
    /// Delete keys, roll segments, and watch the tombstones: they stay while the watermark is
    /// below them, and while they are inside the request-id window; once both have passed,
    /// the scheduler compacts and they are gone — also after a power cut.
    @Test func tombstonesGoOnceTheWatermarkAndTheWindowHavePassedThem() async throws {
        let fs = CrashSimulatingFileSystem()
        var sc = StoreConfiguration(directory: "/data/n1", clusterID: "compaction", nodeID: "n1")
        sc.fileSystem = fs
        sc.segmentSize = 4096
        sc.requestWindow = .seconds(10)
        let store = try await Store.open(sc, logger: testLogger)
        let second: UInt64 = 1_000_000_000
        let t0: UInt64 = 1_700_000_000 * second
        var seq: UInt64 = 0
        func append(_ type: RecordType, _ key: String, at time: UInt64, size: Int = 300) async throws {
            seq += 1
            let r = Record(type: type, key: try Key(key), lsn: lsn(seq), timestamp: time, requestID: RequestID(high: 1, low: seq),
                           value: type == .delete ? [] : [UInt8](repeating: UInt8(seq % 251), count: size))
            try await store.append([try r.encoded()])
        }
        for i in 0..<20 { try await append(.put, "doomed\(i)", at: t0) }
        let beforeDeletes = seq
        for i in 0..<20 { try await append(.delete, "doomed\(i)", at: t0 + second) }
        for i in 0..<30 { try await append(.put, "filler\(i % 3)", at: t0 + 2 * second) }
        func tombstones() async throws -> Int {
            try await store.records(after: .zero).collect().filter { $0.type == .delete }.count
        }
        try #require(try await tombstones() == 20)
        try #require(store.sealedSegments.count >= 5)

        let acknowledged = Acknowledged()
        acknowledged.lsn = lsn(beforeDeletes)
        var settings = CompactionSettings()
        settings.watermarkInterval = .seconds(5)
        settings.garbageRatio = 0.2
        settings.minimumGarbageBytes = 1
        let scheduler = CompactionScheduler(store: store, settings: settings, logger: testLogger) { acknowledged.lsn }

        // The watermark is below the tombstones.
        await scheduler.tick(now: .seconds(0))
        #expect(store.commitWatermark == lsn(beforeDeletes))
        await scheduler.tick(now: .seconds(1))
        #expect(scheduler.metrics.compactions == 0)
        #expect(try await tombstones() == 20)

        // The watermark passes them, but they are inside the 10 s window of the log's last record.
        acknowledged.lsn = store.highestLSN
        await scheduler.tick(now: .seconds(5))
        #expect(store.commitWatermark == store.highestLSN)
        await scheduler.tick(now: .seconds(6))
        #expect(scheduler.metrics.compactions == 0, "nothing is collectable inside the window")
        #expect(try await tombstones() == 20)

        // A minute later (by head timestamps) the log has moved on.
        for i in 0..<20 { try await append(.put, "later\(i % 2)", at: t0 + 60 * second) }
        #expect(store.garbage.collectableRatio >= 0.2, "the segments behind the window are collectable: \(store.garbage)")
        acknowledged.lsn = store.highestLSN
        await scheduler.tick(now: .seconds(10))
        #expect(store.commitWatermark == store.highestLSN)
        #expect(scheduler.metrics.compactions == 1)
        #expect(scheduler.metrics.bytesReclaimed > 0)
        #expect(try await tombstones() == 0)
        #expect(try store.head(try Key("doomed0")) == nil)
        #expect(try store.list(prefix: Array("doomed".utf8)).objects.isEmpty)
        // Nothing left to do: no compaction loop.
        await scheduler.tick(now: .seconds(12))
        await scheduler.tick(now: .seconds(13))
        #expect(scheduler.metrics.compactions == 1)
        let watermark = store.commitWatermark
        await store.close()

        var rng = SplitMix64(seed: 5)
        fs.crash(tornWrites: true, using: &rng)
        let reopened = try await Store.open(sc, logger: testLogger)
        #expect(reopened.commitWatermark == watermark, "the scheduler's raises are persisted")
        #expect(try await reopened.records(after: .zero).collect().filter { $0.type == .delete }.isEmpty)
        #expect(try reopened.head(try Key("doomed0")) == nil)
        await reopened.close()
    }

    /// Cancelling `run()` raises the watermark one last time, so a restart starts from it.
    @Test func stoppingRaisesTheWatermarkOnceMore() async throws {
        let fs = CrashSimulatingFileSystem()
        var sc = StoreConfiguration(directory: "/data/n1", clusterID: "compaction", nodeID: "n1")
        sc.fileSystem = fs
        let store = try await Store.open(sc, logger: testLogger)
        for seq in 1...5 as ClosedRange<UInt64> {
            try await store.append([try Record(type: .put, key: try Key("k"), lsn: lsn(seq), requestID: RequestID(high: 2, low: seq), value: [1]).encoded()])
        }
        let acknowledged = Acknowledged()
        acknowledged.lsn = lsn(3)
        var settings = CompactionSettings()
        settings.interval = .milliseconds(10)
        settings.watermarkInterval = .seconds(3600)
        let scheduler = CompactionScheduler(store: store, settings: settings, logger: testLogger) { acknowledged.lsn }
        let running = Task { await scheduler.run() }
        let deadline = ContinuousClock.now + .seconds(10)
        while store.commitWatermark != lsn(3) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(store.commitWatermark == lsn(3))
        acknowledged.lsn = lsn(5)
        running.cancel()
        await running.value
        #expect(store.commitWatermark == lsn(5), "not due for an hour, but the node is stopping")
        await store.close()
    }
}

extension InProcessChainTests {
    /// The node runs the scheduler: on a running chain every replica raises its watermark and
    /// compacts by itself, reads and writes go on, and the replicas still agree.
    @Suite("Compaction on a running chain")
    struct RunningCompaction {
        @Test(.timeLimit(.minutes(2)))
        func everyReplicaCompactsByItself() async throws {
            try await withTestCluster(.init(nodes: 3, node: { _, c in
                c.store.segmentSize = 64 << 10
                c.store.requestWindow = .seconds(1)
                c.compaction.interval = .milliseconds(20)
                c.compaction.watermarkInterval = .milliseconds(50)
                c.compaction.garbageRatio = 0.3
                c.compaction.minimumGarbageBytes = 64 << 10
            })) { cluster in
                // Overwrites of a few keys: most of the log becomes garbage.
                for i in 0..<200 { _ = try await cluster.client.put("hot/\(i % 10)", pseudoRandomBytes(4096, seed: UInt64(i))) }
                // Move the log's end a window further, so those records leave the request-id window.
                try await Task.sleep(for: .milliseconds(1200))
                var i = 200
                let deadline = ContinuousClock.now + .seconds(60)
                while cluster.nodes.contains(where: { $0.localStore.metrics.compactions == 0 }) {
                    guard ContinuousClock.now < deadline else {
                        Issue.record("not every replica compacted: \(cluster.nodes.map { ($0.localStore.metrics.compactions, $0.localStore.garbage) })")
                        return
                    }
                    // Writes and reads go on meanwhile.
                    _ = try await cluster.client.put("hot/\(i % 10)", pseudoRandomBytes(4096, seed: UInt64(i)))
                    #expect(try await cluster.client.get("hot/\(i % 10)").bytes == pseudoRandomBytes(4096, seed: UInt64(i)))
                    i += 1
                }
                for node in cluster.nodes {
                    let store = node.localStore
                    #expect(store.commitWatermark > .zero, "\(node.configuration.id) raised its watermark")
                    #expect(store.compactedThrough > .zero, "\(node.configuration.id) dropped history")
                    #expect(store.metrics.compactionBytesReclaimed > 0)
                }
                for k in 0..<10 {
                    let last = (0..<i).last { $0 % 10 == k }!
                    #expect(try await cluster.client.get("hot/\(k)").bytes == pseudoRandomBytes(4096, seed: UInt64(last)))
                }
                let tail = try cluster.contents(of: cluster.tail)
                for node in cluster.nodes.dropLast() {
                    #expect(try cluster.contents(of: node) == tail, "\(node.configuration.id) agrees with the tail")
                }
            }
        }
    }
}
