import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import CatenaNode
import CatenaStorage
import CatenaTestSupport
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
            let slow = GatedFileSystem(wrapping: PosixFileSystem(), syncDelay: .milliseconds(10))
            try await withTestCluster(.init(node: { i, configuration in
                if i == 0 { configuration.maxUncommittedBytes = bound }
                if i == 1 { configuration.store.fileSystem = slow }
            })) { cluster in
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
                let contents = try cluster.nodes.map { try cluster.contents(of: $0) }
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
