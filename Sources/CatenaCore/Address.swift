import Glibc

/// A network endpoint written `HOST:PORT`: a host name, an IPv4 address, or an IPv6 address in
/// brackets (`[::1]:7000`), and a port in 0...65535 (0: let the operating system pick a free one
/// when listening).
///
/// Parsing is strict, so a typo in a topology file is an error rather than a surprise at bind
/// time: a host name is 1 to 253 characters of `A-Z a-z 0-9 . - _`; a host of only digits and dots
/// must be a valid IPv4 address; a bracketed host must be a valid IPv6 address (optionally with a
/// `%zone`); an IPv6 address without brackets is refused, since its colons make the port ambiguous.
public struct Address: Hashable, Sendable, CustomStringConvertible {
    /// The host: a name, an IPv4 address, or an IPv6 address (without brackets).
    public var host: String
    /// The TCP port; 0 asks the operating system for a free port when listening.
    public var port: UInt16

    /// Creates an address from its parts, unchecked.
    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT` (or `[IPV6]:PORT`); the error's message quotes `text` and says what is wrong.
    public init(parsing text: String) throws(CatenaError) {
        let hostPart: Substring
        let portPart: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else {
                throw CatenaError(.invalidArgument, "'\(text)' is not HOST:PORT (an IPv6 address needs a closing ']')")
            }
            let afterClose = text[text.index(after: close)...]
            guard afterClose.hasPrefix(":") else {
                throw CatenaError(.invalidArgument, "'\(text)' is not HOST:PORT (expected ':PORT' after ']')")
            }
            hostPart = text[text.index(after: text.startIndex)..<close]
            portPart = afterClose.dropFirst()
            guard Address.isIPv6(hostPart) else {
                throw CatenaError(.invalidArgument, "'\(text)' has host '\(hostPart)', which is not an IPv6 address")
            }
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw CatenaError(.invalidArgument, "'\(text)' is not HOST:PORT")
            }
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
            if hostPart.contains(":") {
                throw CatenaError(.invalidArgument, "'\(text)' is not HOST:PORT (write an IPv6 address in brackets: '[\(hostPart)]:\(portPart)')")
            }
            guard !hostPart.isEmpty else {
                throw CatenaError(.invalidArgument, "'\(text)' has an empty host (write 0.0.0.0 to listen on every interface)")
            }
            if hostPart.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2E }) {
                guard Address.isIPv4(hostPart) else {
                    throw CatenaError(.invalidArgument, "'\(text)' has host '\(hostPart)', which is not an IPv4 address")
                }
            } else {
                guard hostPart.utf8.count <= 253, hostPart.utf8.allSatisfy(Address.isHostNameByte) else {
                    throw CatenaError(.invalidArgument, "'\(text)' has host '\(hostPart)'; a host name is 1 to 253 characters of A-Z a-z 0-9 . - _")
                }
            }
        }
        guard !portPart.isEmpty, portPart.utf8.count <= 5, portPart.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
            throw CatenaError(.invalidArgument, "'\(text)' has port '\(portPart)', which is not a number in 0...65535")
        }
        guard let port = UInt16(portPart) else {
            throw CatenaError(.invalidArgument, "'\(text)' has port \(portPart), outside 0...65535")
        }
        self.host = String(hostPart)
        self.port = port
    }

    /// `HOST:PORT`, with an IPv6 host in brackets; ``init(parsing:)`` reads it back.
    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// Whether the host is a wildcard (`0.0.0.0` or `::`): fine to listen on, meaningless to connect to.
    public var isWildcard: Bool {
        host == "0.0.0.0" || Address.ipv6Bytes(host[...]) == [UInt8](repeating: 0, count: 16)
    }

    private static func isHostNameByte(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2E || c == 0x2D || c == 0x5F
    }

    private static func isIPv4(_ s: Substring) -> Bool {
        var addr = in_addr()
        return inet_pton(AF_INET, String(s), &addr) == 1
    }

    /// Whether `s` is an IPv6 address, optionally followed by `%zone` (zone: `A-Z a-z 0-9 . - _`).
    private static func isIPv6(_ s: Substring) -> Bool { ipv6Bytes(s) != nil }

    /// The 16 bytes of the IPv6 address `s` (a `%zone` suffix is checked, then ignored), or nil.
    private static func ipv6Bytes(_ s: Substring) -> [UInt8]? {
        var address = s
        if let percent = s.firstIndex(of: "%") {
            let zone = s[s.index(after: percent)...]
            guard !zone.isEmpty, zone.utf8.allSatisfy(isHostNameByte) else { return nil }
            address = s[..<percent]
        }
        var addr = in6_addr()
        guard inet_pton(AF_INET6, String(address), &addr) == 1 else { return nil }
        return withUnsafeBytes(of: &addr) { Array($0) }
    }
}
