/// The build's identity, as `catena --version`, the nodes' logs and the `catena_build_info`
/// metric give it.
public enum CatenaBuild {
    /// The release this source tree is (semantic versioning; raised when a release is cut).
    public static let version = "0.11.0-dev"
}
