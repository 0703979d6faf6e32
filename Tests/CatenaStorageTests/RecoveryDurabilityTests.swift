import CatenaCore
import CatenaStorage
import CatenaTestSupport
import Testing

/// A replica builds its machine with `durable = store.lastEnqueuedLSN` at start-up and forwards
/// everything through it at once. That is only sound if what a reopened store reports as
/// durable is synced.
@Suite("Recovery durability")
struct RecoveryDurabilityTests {
    @Test func whatAReopenedStoreCallsDurableSurvivesAPowerCut() async throws {
        let fs = CrashSimulatingFileSystem()
        // 1. The process writes records to the page cache and is killed before its fsync
        //    (durability .none stands for "written, the fsync not yet done").
        let unsynced = Fixture(fs: fs, configure: { $0.durability = .none })
        let a = try await unsynced.open()
        for seq in 1...5 { try await a.append([put("k\(seq)", bytes("v"), seq: UInt64(seq))]) }
        await a.close()
        // 2. The node restarts (the page cache survived): the store says all five are durable,
        //    so the replica's machine and link treat them as durable and forward them.
        let f = Fixture(fs: fs)
        let b = try await f.open()
        let claimed = b.highestLSN
        #expect(claimed.seq == 5)
        await b.close()
        // 3. Power cut before the kernel wrote the page cache back.
        fs.crash()
        let c = try await f.open()
        #expect(c.highestLSN == claimed, "the store reported \(claimed) durable at open without syncing it; after a power cut it has \(c.highestLSN)")
        await c.close()
    }
}
