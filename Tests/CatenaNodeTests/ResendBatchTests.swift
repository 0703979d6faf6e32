import CatenaClusterTestSupport
import CatenaCore
import CatenaMaster
import CatenaNetwork
import CatenaNode
import CatenaWire
import Foundation
import NIOCore
import Synchronization
import Testing

extension InProcessChainTests.Restarts {
    /// A record as large as the head accepts must travel alone also when the link resends from
    /// its log after a reconnection: batched behind smaller records it would make a replicate
    /// frame over the successor's limit, which the successor refuses on every resend, for good.
    ///
    /// It failed before the link cut batches before a record that does not fit (the fake
    /// successor got an 18,350,085-byte frame and refused it).
    @Test("a resend from the log never batches the largest record behind others beyond the frame limit",
          .timeLimit(.minutes(1)))
    func resendKeepsFramesWithinTheLimit() async throws {
        try await withTestCluster(Self.masterOnly) { cluster in
            let master = cluster.master
            let (n1, n2) = (try NodeID("n1"), try NodeID("n2"))
            let limit = ConnectionLimits().maxFrameSize
            // A fake n2: reports position zero on every connection; on the first it takes both records
            // and drops the connection, unacknowledged, so the head must resend both from its log.
            struct Seen {
                var connections = 0
                var seqs = Set<UInt64>()
                /// Records received on later connections (resent).
                var resent = Set<UInt64>()
                var errors: [CatenaError] = []
                var largestFrame = 0
                var resentBoth: Bool { resent.count >= 2 }
            }
            // Shared by the fake's task and the writers' (a class: a local Mutex cannot be captured by two tasks).
            final class Shared: Sendable {
                let state = Mutex(Seen())
                func withLock<R: Sendable>(_ body: (inout Seen) -> R) -> R { state.withLock { body(&$0) } }
            }
            let seen = Shared()
            let fake = try await FrameServer.bind(host: "127.0.0.1", port: 0, clusterID: TestCluster.clusterID, localID: "n2",
                                                  acceptedRoles: [.node], logger: testLogger)
            let fakeTask = Task {
                await fake.run { (conn, reader) async throws(CatenaError) in
                    let first = seen.withLock { s in s.connections += 1; return s.connections == 1 }
                    let epoch = await master.configuration.epoch
                    try? await conn.outbound.write(Frame(type: .position, chainID: 1, epoch: epoch, payload: LSNPayload.encode(.zero)))
                    do throws(CatenaError) {
                        while let frame = try await reader.next() {
                            guard frame.type == .replicate else { continue }
                            let records = try ReplicatePayload.decode(frame.payload)
                            seen.withLock { s in
                                s.largestFrame = max(s.largestFrame, frame.encodedSize)
                                for r in records {
                                    s.seqs.insert(r.lsn.seq)
                                    if !first { s.resent.insert(r.lsn.seq) }
                                }
                            }
                            // The first connection ends, unacknowledged, once both records came.
                            if first && seen.withLock({ $0.seqs.count }) >= 2 { return }
                        }
                    } catch {
                        seen.withLock { $0.errors.append(error) }
                        throw error
                    }
                }
            }
            defer { fake.close(); fakeTask.cancel() }  // also when the test throws before its end
            let reg = try await RequestConnection.connect(to: master.address, hello: Hello(role: .node, clusterID: TestCluster.clusterID, senderID: "n2"))
            _ = try await reg.request(Frame(type: .heartbeat, payload: Heartbeat(node: n2, address: "127.0.0.1:\(fake.port)", highestLSN: .zero).encoded()),
                                      timeout: .seconds(2))
            reg.close()
            // Both writes in flight, neither acknowledged.
            let node = try #require(try await cluster.startNode(n1) { $0.maxUncommittedBytes = 64 << 20 })
            try await cluster.waitForConvergence()
            while seen.withLock({ $0.connections }) == 0 { try await Task.sleep(for: .milliseconds(10)) }

            // A small write, then the largest the head accepts: 16 MiB of value and a may-skip field.
            let client = try await RequestConnection.connect(to: node.address, hello: Hello(role: .client, clusterID: TestCluster.clusterID, senderID: "t"))
            let small = WriteRequest(requestID: RequestID(high: 1, low: 1), type: .put, key: try Key("small"), value: [UInt8](repeating: 1, count: 512 << 10))
            let largestRecord = WriteLimits.maxRecordLength(maxFrameSize: limit)
            let key = try Key("large")
            let value = [UInt8](repeating: 2, count: 16 << 20)
            let field = RecordExtension(tag: 0x7F10, mustUnderstand: false,
                                        value: [UInt8](repeating: 3, count: largestRecord - RecordHeader.overhead - key.bytes.count - 8 - value.count))
            let large = WriteRequest(requestID: RequestID(high: 1, low: 2), type: .put, key: key, value: value, extensions: [field])
            #expect(WriteLimits.recordLength(of: large) == largestRecord)
            // The small one first, and the large one only once the fake holds it: sent together, the large
            // one could be read first, and the small one would then wait behind it for the connection's
            // byte budget, which the unacknowledged large one holds for good. The head refuses writes
            // (unavailable) until its epoch start is recorded, so each is retried, with its request id,
            // until it is taken (then it waits for an acknowledgement that never comes).
            @Sendable func taken(_ request: WriteRequest) async {
                while !Task.isCancelled {
                    do throws(CatenaError) {
                        _ = try await client.request(Frame(type: .write, chainID: 1, payload: WritePayload.encode(request)), timeout: .seconds(30))
                        return
                    } catch where error.code == .unavailable && !client.isClosed {
                        try? await Task.sleep(for: .milliseconds(20))
                    } catch {
                        return
                    }
                }
            }
            let writes = Task {
                async let a: Void = taken(small)
                while seen.withLock({ $0.seqs.isEmpty }) { try await Task.sleep(for: .milliseconds(5)) }
                async let b: Void = taken(large)
                _ = await (a, b)
            }
            defer { writes.cancel() }
            // The fake gets both records, resent from the log, in frames within the limit.
            let deadline = ContinuousClock.now + .seconds(20)
            while ContinuousClock.now < deadline {
                let s = seen.withLock { $0 }
                if s.connections >= 2 && s.resentBoth || !s.errors.isEmpty { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            let s = seen.withLock { $0 }
            #expect(s.errors.isEmpty, "the successor refused a resent frame: \(s.errors)")
            #expect(s.connections >= 2, "the head never resent")
            #expect(s.resentBoth, "resent: \(s.resent)")
            #expect(s.largestFrame <= limit)

            client.close()
            writes.cancel()
            await cluster.stopNode(n1)
            fake.close(); fakeTask.cancel(); await fakeTask.value
        }
    }
}
