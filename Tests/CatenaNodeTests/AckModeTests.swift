import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import CatenaNetwork
import CatenaStorage
import CatenaTestSupport
import CatenaWire
import Synchronization
import Testing

extension InProcessChainTests {
    /// Writes answered once the head, or the first k members, hold them — and replicated and
    /// committed like any other.
    @Suite("Acknowledgement modes")
    struct AckModes {
        @Test("with the tail's disk stalled, writes in modes head and 2 are answered, all waits; readers see them once committed", .timeLimit(.minutes(1)))
        func weakModesAnswerBeforeTheTailHasTheWrite() async throws {
            try await CRAQ.withGatedTail { cluster, tailDisk in
                let client = cluster.client
                let gate = tailDisk.holdNextSync(matching: ".seg")
                let atHead = try await client.with(ack: .head).put("h", Array("head".utf8))
                let atTwo = try await client.with(ack: .first(2)).put("two", Array("two".utf8))
                let answered = Mutex(false)
                let all = Task {
                    let receipt = try await client.put("all", Array("all".utf8))
                    answered.withLock { $0 = true }
                    return receipt
                }
                try await Task.sleep(for: .milliseconds(300))
                #expect(!answered.withLock { $0 }, "a write in mode all was answered before the tail held it")
                // Neither is committed: a linearizable read, at any member, does not see them;
                // a read in mode any at the head does.
                for _ in 0..<3 {
                    #expect(try await client.exists("h") == false)
                    #expect(try await client.exists("two") == false)
                }
                #expect(try await CRAQ.get("h", at: cluster.head, mode: .any).get() == Array("head".utf8))
                #expect(try await CRAQ.get("two", at: cluster.nodes[1], mode: .any).get() == Array("two".utf8))
                gate.open()
                let committed = try await all.value
                #expect(atHead.lsn < atTwo.lsn && atTwo.lsn < committed.lsn)
                // Replicated and committed like any write, at the LSNs the answers named.
                for key in ["h", "two", "all"] { #expect(try await client.exists(key)) }
                #expect(try await client.head("h").lsn == atHead.lsn)
                try await cluster.waitForConvergence()
            }
        }

        @Test("a mode asking for more members than the chain has is answered once committed", .timeLimit(.minutes(1)))
        func modesBeyondTheChainMeanAll() async throws {
            try await CRAQ.withGatedTail { cluster, tailDisk in
                let client = cluster.client
                let gate = tailDisk.holdNextSync(matching: ".seg")
                let nine = Task { try await client.with(ack: .first(9)).put("nine", [9]) }
                try await Task.sleep(for: .milliseconds(300))
                #expect(try await client.exists("nine") == false)
                gate.open()
                _ = try await nine.value
                #expect(try await client.exists("nine"))
            }
        }
    }
}
