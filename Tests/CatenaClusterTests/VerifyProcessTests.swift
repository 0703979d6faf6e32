import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import Foundation
import Testing

extension ProcessClusterSuites {
    /// `catena chain verify` and `catena node verify` against real processes: a clean chain
    /// verifies; a replica damaged on purpose — a byte of a stored value flipped in a stopped
    /// node's segment file — is found by both, which name the key (and the node, the segment).
    @Suite("Verify tools")
    struct VerifyProcessTests {
        /// The exit status of a data error (`ExitStatus.dataError` in the CLI).
        static let dataError: Int32 = 4

        @Test(.timeLimit(.minutes(3)))
        func chainVerifyFindsAReplicaDamagedOnPurposeAndNamesTheKey() async throws {
            var options = ProcessClusterTests.options()
            // Small segments, so that the damaged value lies in a sealed segment.
            options.nodeArguments = ["--segment-size", "64KiB"]
            try await withTestCluster(options) { cluster in
                let master = ["--master", cluster.masterAddress.description]
                let client = cluster.client
                let target = "photos/2026/damaged one.jpg"
                let value = pseudoRandomBytes(8 << 10, seed: 11)
                try await client.put(target, value)
                // Later writes fill and seal the segment that holds it.
                for i in 0..<40 { try await client.put("photos/\(i).jpg", pseudoRandomBytes(4 << 10, seed: UInt64(100 + i))) }

                let clean = try await run(["chain", "verify"] + master)
                #expect(clean.status == 0, "\(clean)")
                #expect(clean.stdout.contains("41 keys compared") && clean.stdout.contains("no differences"), "\(clean.stdout)")

                let victim = try NodeID("n2")
                await cluster.stopNode(victim)
                let dir = cluster.directory + "/n2"
                let offlineClean = try await run(["node", "verify", "--data-dir", dir])
                #expect(offlineClean.status == 0, "\(offlineClean)")
                #expect(offlineClean.stdout.contains("no problems"), "\(offlineClean.stdout)")

                // Flip one byte in the middle of the stored value.
                let segments = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".seg") }.sorted()
                var damaged: String?
                for name in segments {
                    let url = URL(fileURLWithPath: dir + "/" + name)
                    var bytes = try Data(contentsOf: url)
                    guard let range = bytes.range(of: Data(value)) else { continue }
                    bytes[range.lowerBound + 4000] ^= 0x5A
                    try bytes.write(to: url)
                    damaged = name
                }
                let segment = try #require(damaged, "no segment of n2 holds the value")
                // Why this damage: start-up loads a sealed segment from its hint file and reads no
                // value in it, so the node starts and serves as if nothing happened (damage in the
                // active segment would be found by start-up's scan, and only a scrub that reads
                // the data finds this).
                #expect(segment != segments.last, "the value's segment is sealed")
                #expect(FileManager.default.fileExists(atPath: dir + "/" + segment.dropLast(4) + ".hint"), "and has a hint file")

                let offline = try await run(["node", "verify", "--data-dir", dir])
                #expect(offline.status == Self.dataError, "\(offline)")
                let problem = offline.stdout.split(separator: "\n").first { $0.hasPrefix("record \(segment) offset ") }
                #expect(problem?.contains("key \(target)") == true, "\(offline.stdout)")
                #expect(offline.stdout.contains("1 problem"), "\(offline.stdout)")

                try await cluster.startNode(victim)
                try await cluster.waitForStatus("n2 is back in the chain", timeout: .seconds(60)) { $0.hasSettled(members: cluster.nodeIDs) }
                // It serves: start-up did not notice the damage.
                #expect(try await client.get("photos/3.jpg").bytes == pseudoRandomBytes(4 << 10, seed: 103))

                let found = try await run(["chain", "verify", "--recheck-delay-ms", "50"] + master)
                #expect(found.status == Self.dataError, "\(found)")
                let lines = found.stdout.split(separator: "\n").map(String.init)
                let differences = lines.filter { line in ScrubDifference.Kind.allCases.contains { line.hasPrefix($0.rawValue + " ") } }
                #expect(differences.count == 1, "one difference: \(found.stdout)")
                #expect(differences.first?.hasPrefix("corrupt n2 'photos/2026/damaged one.jpg': ") == true, "naming the node and the key: \(found.stdout)")
                #expect(differences.first?.contains("checksum") == true, "\(differences)")
                #expect(found.stdout.contains("1 difference (1 corrupt)"), "\(found.stdout)")

                let json = try await run(["chain", "verify", "--json", "--recheck-delay-ms", "50"] + master)
                #expect(json.status == Self.dataError, "\(json)")
                let document = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
                let listed = try #require(document["differences"] as? [[String: Any]])
                #expect(listed.count == 1)
                #expect(listed.first?["kind"] as? String == "corrupt")
                #expect(listed.first?["node"] as? String == "n2")
                #expect(listed.first?["key"] as? String == target)
                #expect(document["ok"] as? Bool == false)
                #expect(document["keysCompared"] as? Int == 41)
            }
        }
    }
}
