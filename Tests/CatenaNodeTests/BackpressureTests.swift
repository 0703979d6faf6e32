import CatenaClient
import CatenaCore
import CatenaNode
import CatenaStorage
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension InProcessChainTests {
    @Suite("A slow successor bounds the head's memory")
    struct Backpressure {
        @Test("with a slow middle the head holds at most maxUncommittedBytes, throttles, and commits everything",
              .timeLimit(.minutes(1)))
        func slowSuccessor() async throws {
            let bound = 2 << 20
            let valueSize = 256 << 10
            let writes = 160  // 40 MiB
            let writers = 32
            let slow = SlowFileSystem(wrapping: PosixFileSystem(), syncDelay: .milliseconds(10))
            try await withCluster(configure: { i, configuration in
                if i == 0 { configuration.maxUncommittedBytes = bound }
                if i == 1 { configuration.store.fileSystem = slow }
            }) { cluster in
                let client = cluster.client
                let receipts: [Int: WriteReceipt] = try await withThrowingTaskGroup(of: [(Int, WriteReceipt)].self) { group in
                    for w in 0..<writers {
                        group.addTask {
                            var mine: [(Int, WriteReceipt)] = []
                            for i in stride(from: w, to: writes, by: writers) {
                                mine.append((i, try await client.put("bp/\(i)", pseudoRandomBytes(valueSize, seed: UInt64(i)))))
                            }
                            return mine
                        }
                    }
                    var all: [Int: WriteReceipt] = [:]
                    for try await part in group { for (i, r) in part { all[i] = r } }
                    return all
                }
                #expect(receipts.count == writes)
                #expect(slow.syncs > 0, "the middle's store did not go through the slow file system")

                let head = await cluster.head.metrics
                let oneWrite = RecordHeader.overhead + "bp/999".utf8.count + valueSize
                #expect(head.peakUncommittedBytes <= bound + oneWrite, "peak \(head.peakUncommittedBytes) bytes")
                #expect(head.peakUncommittedBytes > bound / 2, "the head never filled its window (peak \(head.peakUncommittedBytes))")
                #expect(head.writesThrottled > 0)
                #expect(head.writesCommitted >= writes)
                #expect(head.uncommittedBytes == 0)
                #expect(head.inFlightBytes == 0)

                // Every write committed, on every replica, with its content.
                let contents = try cluster.nodes.map { try cluster.replicaContents($0) }
                for other in contents.dropFirst() { #expect(other == contents[0]) }
                #expect(contents[0].count == writes)
                for (i, receipt) in receipts {
                    let info = contents[0][try Key("bp/\(i)")]
                    #expect(info?.lsn == receipt.lsn, "bp/\(i)")
                    #expect(info?.contentChecksum == XXH3.hash(pseudoRandomBytes(valueSize, seed: UInt64(i))), "bp/\(i)")
                }
                let sample = try await client.get("bp/17")
                #expect(sample.bytes == pseudoRandomBytes(valueSize, seed: 17))
            }
        }
    }
}

/// A ``FileSystem`` whose files take `syncDelay` longer to `sync()`: a slow disk. The delay
/// blocks the store's own syncer thread, never Swift's cooperative pool.
final class SlowFileSystem: FileSystem, Sendable {
    let base: any FileSystem
    let syncDelay: Duration
    private let syncCount = Atomic<Int>(0)

    init(wrapping base: any FileSystem, syncDelay: Duration) {
        self.base = base
        self.syncDelay = syncDelay
    }

    /// Syncs slowed down so far.
    var syncs: Int { syncCount.load(ordering: .relaxed) }

    fileprivate func slowDown() {
        syncCount.add(1, ordering: .relaxed)
        let (seconds, attoseconds) = syncDelay.components
        usleep(UInt32(seconds * 1_000_000 + attoseconds / 1_000_000_000_000))
    }

    func createDirectory(_ path: String) throws(CatenaError) { try base.createDirectory(path) }
    func contentsOfDirectory(_ path: String) throws(CatenaError) -> [String] { try base.contentsOfDirectory(path) }
    func fileExists(_ path: String) -> Bool { base.fileExists(path) }
    func open(_ path: String, mode: FileOpenMode) throws(CatenaError) -> any StorageFile {
        SlowFile(base: try base.open(path, mode: mode), fileSystem: self)
    }
    func rename(_ from: String, to: String) throws(CatenaError) { try base.rename(from, to: to) }
    func remove(_ path: String) throws(CatenaError) { try base.remove(path) }
    func syncDirectory(_ path: String) throws(CatenaError) { try base.syncDirectory(path) }
    func lock(_ path: String) throws(CatenaError) -> any FileLock { try base.lock(path) }
}

/// A file of a ``SlowFileSystem``: `sync()` sleeps first.
final class SlowFile: StorageFile, Sendable {
    let base: any StorageFile
    let fileSystem: SlowFileSystem

    init(base: any StorageFile, fileSystem: SlowFileSystem) {
        self.base = base
        self.fileSystem = fileSystem
    }

    var path: String { base.path }
    func size() throws(CatenaError) -> UInt64 { try base.size() }
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(CatenaError) -> Int {
        try base.read(at: offset, into: buffer)
    }
    func write(_ chunks: [[UInt8]], at offset: UInt64) throws(CatenaError) { try base.write(chunks, at: offset) }
    func sync() throws(CatenaError) {
        fileSystem.slowDown()
        try base.sync()
    }
    func truncate(to size: UInt64) throws(CatenaError) { try base.truncate(to: size) }
    func close() { base.close() }
}
