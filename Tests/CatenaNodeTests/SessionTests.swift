import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import CatenaNode
import CatenaTestSupport
import Testing

extension InProcessChainTests {
    /// Session guarantees for reads in mode any while a replica lags on purpose (its disk held).
    @Suite("Sessions")
    struct Sessions {
        /// A `get` sent straight to `node` in mode any, with `session` as the reader's session.
        static func get(_ key: String, at node: Node, session: LSN?) async throws -> Result<[UInt8], CatenaError> {
            try await CRAQ.get(key, at: node, mode: .any, session: session)
        }

        @Test("read-your-writes and monotonic reads hold with the session's token, and break without it, while the tail lags", .timeLimit(.minutes(1)))
        func guaranteesHoldWithTheTokenOnly() async throws {
            try await CRAQ.withGatedTail { cluster, tailDisk in
                let client = cluster.client
                try await client.put("k", Array("v1".utf8))
                // The tail stops making records durable: it lags. v2 is acknowledged by the head.
                let gate = tailDisk.holdNextSync(matching: ".seg")
                let v2 = try await client.with(ack: .head).put("k", Array("v2".utf8))
                #expect(client.session.lsn == v2.lsn)
                // Without the session, the lagging tail answers what it has: the anomaly.
                #expect(try await Self.get("k", at: cluster.tail, session: nil).get() == Array("v1".utf8))
                // With it, the tail does not answer: it does not hold the session's write.
                guard case .failure(let error) = try await Self.get("k", at: cluster.tail, session: client.session.lsn) else {
                    Issue.record("a member behind the session answered")
                    return
                }
                #expect(error.code == .unavailable, "\(error)")
                // Through the client, reads in mode any go to every member in turn (the tail
                // among them, which sends them on): each sees the write.
                let reader = client.with(readMode: .any)
                for _ in 0..<6 { #expect(try await reader.get("k").bytes == Array("v2".utf8)) }
                // Another client takes the session up from its token: it reads the write too.
                var configuration = CatenaClient.Configuration()
                configuration.clusterID = TestCluster.clusterID
                configuration.readMode = .any
                let other = try CatenaClient(masters: [cluster.masterAddress.description], configuration: configuration)
                let resumed = other.with(session: try Session(token: client.session.token))
                for _ in 0..<6 { #expect(try await resumed.get("k").bytes == Array("v2".utf8)) }
                // Without it, one of three reads in turn lands on the tail and goes back to v1.
                var seen: [[UInt8]] = []
                for _ in 0..<3 { seen.append(try await other.with(session: Session()).get("k").bytes) }
                #expect(seen.contains(Array("v1".utf8)), "\(seen)")
                await other.close()
                gate.open()
                // Once the tail holds it, it answers the session.
                try await cluster.waitFor("the tail holds v2") { (try? cluster.tail.localStore.head(try Key("k")))?.lsn == v2.lsn }
                #expect(try await Self.get("k", at: cluster.tail, session: client.session.lsn).get() == Array("v2".utf8))
            }
        }

        @Test("a session's token round-trips; other strings are refused")
        func tokens() throws {
            let session = Session()
            #expect(session.lsn == .zero)
            session.observe(LSN(epoch: 3, seq: 42))
            session.observe(LSN(epoch: 2, seq: 40))
            #expect(session.token == "s1:3.42")
            #expect(try Session(token: session.token).lsn == LSN(epoch: 3, seq: 42))
            for bad in ["", "3.42", "s2:3.42", "s1:3", "s1:x.y", "s1:3.42.1"] {
                #expect { try Session(token: bad) } throws: { ($0 as? CatenaError)?.code == .invalidArgument }
            }
        }
    }
}
