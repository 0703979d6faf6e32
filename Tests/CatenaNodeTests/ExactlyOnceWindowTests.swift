import CatenaClusterTestSupport
import CatenaCore
import CatenaNetwork
import CatenaNode
import CatenaStorage
import CatenaWire
import Foundation
import Testing

extension InProcessChainTests.Restarts {
    /// A small write, then more than 100,000 records, then a restart of the chain: a retry of
    /// the small write must get its original LSN (it is well inside the 60 s request-id window).
    /// It failed while the node rebuilt its request table from its log's last 100,000 records or
    /// 256 MiB — the retry was applied a second time (as after a 300 MiB upload); the node now
    /// reads the store's request-id window (`Store.recentRequests(window:)`).
    @Test("a retry after a restart is recognised whatever was written since (the request-id window)", .timeLimit(.minutes(3)))
    func retryAfterRestartBehindManyRecords() async throws {
        try await withTestCluster(Self.masterOnly) { cluster in
            let master = cluster.master
            let (n1, n2) = (try NodeID("n1"), try NodeID("n2"))
            var head = try #require(try await cluster.startNode(n1))
            var tail = try #require(try await cluster.startNode(n2))
            try await cluster.waitForConvergence()

            let request = WriteRequest(requestID: RequestID(high: 0x5EED, low: 1), type: .put, key: try Key("small"), value: [1])
            /// Sends `r` to whichever node the master names head, as a client does, until it is answered.
            func send(_ r: WriteRequest, among nodes: [Node]) async throws -> LSN {
                let deadline = ContinuousClock.now + .seconds(20)
                while true {
                    let headID = await master.configuration.members.first?.id
                    let node = try #require(nodes.first { $0.configuration.id == headID })
                    let c = try await RequestConnection.connect(to: node.address, hello: Hello(role: .client, clusterID: TestCluster.clusterID, senderID: "t"))
                    let reply = await Result.catching { () async throws(CatenaError) in
                        try await c.request(Frame(type: .write, chainID: 1, payload: WritePayload.encode(r)), timeout: .seconds(10))
                    }
                    c.close()
                    switch reply {
                    case .success(let frame):
                        return try LSNPayload.decode(frame.payload)
                    case .failure(let error):
                        guard [.unavailable, .redirect, .staleEpoch, .epochAhead].contains(error.code), ContinuousClock.now < deadline else { throw error }
                        try await Task.sleep(for: .milliseconds(20))
                    }
                }
            }
            let first = try await send(request, among: [head, tail])

            // Stop the chain and append 100,000 more small writes to both logs, as the chain would
            // have (same records, continuing each log).
            await cluster.stopNode(n1)
            await cluster.stopNode(n2)
            let stores = [try await cluster.openStore(of: n1), try await cluster.openStore(of: n2)]
            let end = stores[0].lastEnqueuedLSN
            try #require(stores[1].lastEnqueuedLSN == end, "both logs end at the same record")
            var seq = end.seq
            let now = wallClockNanoseconds()
            for _ in 0..<100 {
                var batch: [EncodedRecord] = []
                for _ in 0..<1000 {
                    seq += 1
                    batch.append(try Record(type: .put, chainID: 1, key: try Key("filler/\(seq % 100)"), lsn: LSN(epoch: end.epoch, seq: seq),
                                            timestamp: now, requestID: RequestID(high: 0xF111, low: seq), value: [2]).encoded())
                }
                for store in stores { try await store.append(batch) }
            }
            // The store finds the small write's id; the node's scan of the last 100,000 records does not.
            #expect(try await stores[0].recentRequests(window: .seconds(60)).contains { $0.requestID == request.requestID && $0.lsn == first })
            for store in stores { await store.close() }

            head = try #require(try await cluster.startNode(n1))
            tail = try #require(try await cluster.startNode(n2))
            try await cluster.waitForConvergence()
            let retried = try await send(request, among: [head, tail])
            #expect(retried == first, "the retry was applied a second time, at \(retried)")
        }
    }
}
