import CatenaClusterTestSupport
import CatenaCore
import CatenaNetwork
import CatenaNode
import CatenaStorage
import CatenaTestSupport
import Testing

/// Node.start reads the log's last records (for its request table) through
/// `Store.records(after:)`, which throws `corruption` at a damaged record. The store itself opens
/// with damage in the middle of its log and keeps serving (DESIGN invariant 6); the node must too.
extension InProcessChainTests {
@Suite("Start-up over a damaged log")
struct StartupTests {
    @Test func aNodeStartsOnALogWithOneDamagedRecord() async throws {
        let fs = CrashSimulatingFileSystem()
        var sc = StoreConfiguration(directory: "/data/n1", clusterID: "review", nodeID: "n1")
        sc.fileSystem = fs
        let store = try await Store.open(sc)
        let marker = Array("DAMAGE-ME-".utf8) + Array(repeating: UInt8(ascii: "."), count: 40)
        for seq in 1...8 {
            let value = seq == 3 ? marker : Array("value-\(seq)".utf8) + Array(repeating: UInt8(ascii: "."), count: 40)
            let r = Record(type: .put, key: try Key("k\(seq)"), lsn: LSN(epoch: 1, seq: UInt64(seq)), timestamp: UInt64(seq),
                           requestID: RequestID(high: 9, low: UInt64(seq)), value: value)
            try await store.append([try r.encoded()])
        }
        await store.close()
        // Flip one byte inside record 3's value (bit rot in the middle of the log).
        let segment = try #require(try fs.contentsOfDirectory("/data/n1").first { $0.hasSuffix(".seg") })
        let path = "/data/n1/" + segment
        let bytes = try #require(fs.contents(of: path))
        let at = try #require((0..<(bytes.count - marker.count)).first { Array(bytes[$0..<($0 + marker.count)]) == marker })
        fs.corrupt(path: path, at: at + 3, with: [bytes[at + 3] ^ 0x5A])

        // The store alone opens, reports the damage and serves the rest.
        let reopened = try await Store.open(sc)
        #expect(reopened.damage.count == 1)
        #expect(reopened.highestLSN.seq == 8)
        await reopened.close()

        // The node must start as well.
        var nc = NodeConfiguration(id: try NodeID("n1"), clusterID: "review", listen: Address(host: "127.0.0.1", port: 0),
                                   masters: [Address(host: "127.0.0.1", port: 1)], dataDirectory: "/data/n1")
        nc.store = sc
        let result = await Result.catching { () async throws(CatenaError) in try await Node.start(nc, logger: testLogger) }
        switch result {
        case .success(let node):
            let task = Task { await node.run() }
            task.cancel(); await task.value
        case .failure(let error):
            Issue.record("the node refuses to start on a log the store opened: \(error)")
        }
    }
}
}
