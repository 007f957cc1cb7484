#!/usr/bin/env escript
%%! -noshell
%%
%% hexcore.escript: hexmirror's test oracle. It drives hex_core, the reference
%% implementation of the Hex repository format, so that integration tests can
%% check hexmirror against the code real clients run rather than against our
%% own reading of the spec.
%%
%% hex_core is not installed on its own anywhere: Debian's rebar3 (3.19)
%% vendors hex_core 0.7.1 as `r3_hex_*` modules inside the /usr/bin/rebar3
%% escript archive. We load those modules straight out of that archive, so
%% the oracle is exactly what `rebar3 compile` uses when it talks to a mirror.
%%
%% Commands (exit 0 on success, 1 when the checked operation fails, with the
%% reason on stderr, 2 on bad usage):
%%
%%   build-upstream OUTDIR REPO_NAME PRIVKEY.pem SPEC
%%       Writes a complete signed repository: names, versions, packages/NAME,
%%       tarballs/NAME-VERSION.tar and public_key (SPKI PEM). SPEC holds one
%%       Erlang term per release:
%%           {"name", "1.0.0", [{"dep", "~> 1.0", Optional}], Opts}.
%%       Opts: {retired, 'RETIRED_SECURITY', "message"}
%%             {repository_dep, "dep", "otherrepo"}   Dependency.repository
%%             {files, [{"priv/x.txt", "content"}]}   extra package files
%%       /names carries no updated_at: the Names schema in hex_core 0.7.1 has
%%       no field 3, so its encoder cannot write it.
%%   fetch REPO_URL REPO_NAME PUBKEY.pem PACKAGE
%%       GETs /packages/PACKAGE as rebar3 does (signature and origin checked)
%%       and prints "VERSION OUTER_CHECKSUM_HEX" per release ("-" if the
%%       release has no outer checksum).
%%   verify-file FILE names|versions|package REPO_NAME PUBKEY.pem [PACKAGE]
%%       Gunzips a registry file from disk, verifies its signature and its
%%       repository (and package) name; prints "ok".
%%   tarball NAME VERSION OUT.tar [DEP:REQUIREMENT ...]
%%       Writes one package tarball; prints its inner and outer checksums.
%%   publish API_URL API_KEY TARBALL [replace]
%%   retire API_URL API_KEY NAME VERSION REASON MESSAGE
%%   unretire API_URL API_KEY NAME VERSION
%%   revert API_URL API_KEY NAME VERSION
%%   get-package API_URL API_KEY NAME
%%   get-release API_URL API_KEY NAME VERSION
%%   search API_URL API_KEY QUERY              (sort=name)
%%       Calls the Hex API the way rebar3 3.19 does (r3_hex_api_release:
%%       publish/3 posts to API_URL/publish) and prints the HTTP status, then
%%       the decoded body (`nil` unless it was application/vnd.hex+erlang).
%%       Exits 0 whatever the status, so tests can assert refusals.
%%   unpack TARBALL
%%       Unpacks a tarball in memory as clients do; prints "ok" and both
%%       checksums, so tests can show a hostile tarball is refused by the
%%       reference too.

-mode(compile).
-include_lib("public_key/include/public_key.hrl").

main(Args) ->
    load_hex_core(),
    try command(Args) of
        ok -> halt(0);
        {fail, Why} -> fail(Why)
    catch
        throw:{usage, Msg} ->
            io:format(standard_error, "hexcore: ~s~nsee the comment at the top of ~s~n",
                      [Msg, escript:script_name()]),
            halt(2);
        Class:Reason:Stack ->
            %% A crash inside hex_core is a refusal too (that is what a client
            %% sees), but the stack helps tell it apart from a harness bug.
            fail(io_lib:format("hex_core crashed: ~p:~p~n~p", [Class, Reason, Stack]))
    end.

fail(Why) ->
    io:format(standard_error, "hexcore: ~s~n", [Why]),
    halt(1).

%%% Commands

command(["build-upstream", OutDir, Repo, KeyFile, SpecFile]) ->
    build_upstream(OutDir, list_to_binary(Repo), read_private_key(KeyFile), read_spec(SpecFile));
command(["fetch", Url, Repo, KeyFile, Package]) ->
    Config = repo_config(Url, Repo, read_file(KeyFile)),
    case r3_hex_repo:get_package(Config, list_to_binary(Package)) of
        {ok, {200, _Headers, Releases}} ->
            lists:foreach(fun print_release/1, Releases);
        {ok, {Status, _Headers, _Body}} ->
            {fail, io_lib:format("GET ~s/packages/~s: http status ~p", [Url, Package, Status])};
        {error, Reason} ->
            {fail, io_lib:format("GET ~s/packages/~s refused: ~p", [Url, Package, Reason])}
    end;
command(["verify-file", File, Kind, Repo, KeyFile | MaybePackage]) ->
    verify_file(File, Kind, list_to_binary(Repo), read_file(KeyFile), MaybePackage);
command(["tarball", Name, Version, Out | DepArgs]) ->
    Deps = [parse_dep_arg(A) || A <- DepArgs],
    #{tarball := Tar} = Built = build_tarball(to_bin(Name), to_bin(Version), Deps, #{}),
    write_file(Out, Tar),
    print_checksums(Built);
command(["publish", Url, Key, File | Opts]) ->
    Params = [{replace, true} || "replace" <- Opts],
    api_result(r3_hex_api_release:publish(api_config(Url, Key), read_file(File), Params));
command(["retire", Url, Key, Name, Version, Reason, Message]) ->
    Body = #{<<"reason">> => to_bin(Reason), <<"message">> => to_bin(Message)},
    api_result(r3_hex_api_release:retire(api_config(Url, Key), to_bin(Name), to_bin(Version), Body));
command(["unretire", Url, Key, Name, Version]) ->
    api_result(r3_hex_api_release:unretire(api_config(Url, Key), to_bin(Name), to_bin(Version)));
command(["revert", Url, Key, Name, Version]) ->
    api_result(r3_hex_api_release:delete(api_config(Url, Key), to_bin(Name), to_bin(Version)));
command(["get-package", Url, Key, Name]) ->
    api_result(r3_hex_api_package:get(api_config(Url, Key), to_bin(Name)));
command(["get-release", Url, Key, Name, Version]) ->
    api_result(r3_hex_api_release:get(api_config(Url, Key), to_bin(Name), to_bin(Version)));
command(["search", Url, Key, Query]) ->
    api_result(r3_hex_api_package:search(api_config(Url, Key), to_bin(Query), [{sort, <<"name">>}]));
command(["unpack", File]) ->
    case r3_hex_tarball:unpack(read_file(File), memory) of
        {ok, Unpacked} ->
            io:format("ok~n"),
            print_checksums(Unpacked);
        {error, Reason} ->
            {fail, io_lib:format("unpack ~s refused: ~s (~p)",
                                 [File, r3_hex_tarball:format_error(Reason), Reason])}
    end;
command(_) ->
    throw({usage, "unknown command or wrong number of arguments"}).

%%% build-upstream

%% Tarballs first, then the signed registry files that name their checksums.
build_upstream(OutDir, Repo, Key, Spec) ->
    Releases = [build_release(OutDir, R) || R <- Spec],
    Packages = group_by_name(Releases),
    lists:foreach(fun({Name, Rels}) ->
                      Payload = r3_hex_registry:encode_package(
                                  #{name => Name, repository => Repo,
                                    releases => [registry_release(R, Repo) || R <- Rels]}),
                      write_signed(filename:join([OutDir, "packages", Name]), Payload, Key)
                  end, Packages),
    Names = r3_hex_registry:encode_names(
              #{repository => Repo, packages => [#{name => N} || {N, _} <- Packages]}),
    write_signed(filename:join(OutDir, "names"), Names, Key),
    Versions = r3_hex_registry:encode_versions(
                 #{repository => Repo,
                   packages => [#{name => N,
                                  versions => [V || #{version := V} <- Rels],
                                  retired => retired_indexes(Rels)}
                                || {N, Rels} <- Packages]}),
    write_signed(filename:join(OutDir, "versions"), Versions, Key),
    write_file(filename:join(OutDir, "public_key"), public_key_pem(Key)),
    io:format("built ~b releases of ~b packages in ~s~n",
              [length(Releases), length(Packages), OutDir]).

build_release(OutDir, {Name0, Version0, Deps0, Opts}) ->
    Name = to_bin(Name0),
    Version = to_bin(Version0),
    DepRepos = maps:from_list([{to_bin(D), to_bin(R)} || {repository_dep, D, R} <- Opts]),
    Deps = [with_repository(normalize_dep(D), DepRepos) || D <- Deps0],
    Extra = lists:append([Files || {files, Files} <- Opts]),
    Built = build_tarball(Name, Version, Deps, #{extra_files => Extra}),
    write_file(filename:join([OutDir, "tarballs", <<Name/binary, "-", Version/binary, ".tar">>]),
               maps:get(tarball, Built)),
    Retired = [#{reason => Reason, message => to_bin(Msg)} || {retired, Reason, Msg} <- Opts],
    #{name => Name, version => Version, deps => Deps, retired => Retired,
      inner_checksum => maps:get(inner_checksum, Built),
      outer_checksum => maps:get(outer_checksum, Built)};
build_release(_OutDir, Other) ->
    throw({usage, io_lib:format("bad release in spec, want {Name, Version, Deps, Opts}: ~p", [Other])}).

normalize_dep({D, Req, Optional}) when is_boolean(Optional) ->
    #{package => to_bin(D), requirement => to_bin(Req), optional => Optional};
normalize_dep({D, Req}) ->
    normalize_dep({D, Req, false});
normalize_dep(Other) ->
    throw({usage, io_lib:format("bad dependency in spec, want {Name, Requirement, Optional}: ~p", [Other])}).

with_repository(#{package := P} = Dep, DepRepos) ->
    case DepRepos of
        #{P := Repo} -> Dep#{repository => Repo};
        #{} -> Dep
    end.

%% The Release message as hex.pm writes it: dependencies sorted by name,
%% `optional` only when true, `repository` only when it differs from ours.
registry_release(#{version := V, deps := Deps, retired := Retired} = R, Repo) ->
    Base = #{version => V,
             inner_checksum => maps:get(inner_checksum, R),
             outer_checksum => maps:get(outer_checksum, R),
             dependencies => [registry_dep(D, Repo) || D <- lists:sort(fun by_package/2, Deps)]},
    case Retired of
        [Status | _] -> Base#{retired => Status};
        [] -> Base
    end.

by_package(#{package := A}, #{package := B}) -> A =< B.

registry_dep(#{package := P, requirement := Req} = Dep, Repo) ->
    Base = #{package => P, requirement => Req},
    WithOptional = case Dep of
                       #{optional := true} -> Base#{optional => true};
                       _ -> Base
                   end,
    case Dep of
        #{repository := Other} when Other =/= Repo -> WithOptional#{repository => Other};
        _ -> WithOptional
    end.

%% Package names in byte order, each with its releases in SemVer order, as
%% hex.pm emits them; /versions and the retired indexes follow that order.
group_by_name(Releases) ->
    Grouped = lists:foldl(fun(#{name := N} = R, Acc) ->
                              maps:update_with(N, fun(Rs) -> [R | Rs] end, [R], Acc)
                          end, #{}, Releases),
    [{N, lists:sort(fun(A, B) -> version_key(A) =< version_key(B) end, Rs)}
     || {N, Rs} <- lists:sort(maps:to_list(Grouped))].

retired_indexes(Rels) ->
    [I || {I, #{retired := [_ | _]}} <- lists:zip(lists:seq(0, length(Rels) - 1), Rels)].

%%% Package tarballs

%% A package rebar3 can compile: one module exporting version/0 and an
%% .app.src whose `applications` names the non-optional dependencies, so the
%% client has to fetch and build those too.
build_tarball(Name, Version, Deps, Opts) ->
    Module = <<"-module(", Name/binary, ").\n"
               "-export([version/0]).\n\n"
               "version() -> \"", Version/binary, "\".\n">>,
    Apps = [[", ", P] || #{package := P, optional := false} <- Deps],
    AppSrc = iolist_to_binary(
               ["{application, ", Name, ",\n"
                " [{description, \"hexmirror test package ", Name, "\"},\n"
                "  {vsn, \"", Version, "\"},\n"
                "  {registered, []},\n"
                "  {applications, [kernel, stdlib", Apps, "]},\n"
                "  {env, []}]}.\n"]),
    Extra = [{to_list(P), to_bin(C)} || {P, C} <- maps:get(extra_files, Opts, [])],
    Files = [{"src/" ++ to_list(Name) ++ ".erl", Module},
             {"src/" ++ to_list(Name) ++ ".app.src", AppSrc} | Extra],
    Metadata = #{<<"name">> => Name,
                 <<"version">> => Version,
                 <<"app">> => Name,
                 <<"description">> => <<"hexmirror test package ", Name/binary>>,
                 <<"licenses">> => [<<"Apache-2.0">>],
                 <<"build_tools">> => [<<"rebar3">>],
                 <<"requirements">> => maps:from_list([metadata_requirement(D) || D <- Deps]),
                 <<"files">> => [list_to_binary(P) || {P, _} <- Files]},
    {ok, Built} = r3_hex_tarball:create(Metadata, Files),
    Built.

%% The map form of `requirements` (what rebar3_hex writes).
metadata_requirement(#{package := P, requirement := Req, optional := Optional} = Dep) ->
    Base = #{<<"app">> => P, <<"optional">> => Optional, <<"requirement">> => Req},
    case Dep of
        #{repository := Repo} -> {P, Base#{<<"repository">> => Repo}};
        #{} -> {P, Base}
    end.

parse_dep_arg(Arg) ->
    case string:split(Arg, ":") of
        [D, Req] when D =/= "", Req =/= "" -> normalize_dep({D, Req, false});
        _ -> throw({usage, io_lib:format("dependency ~p is not DEP:REQUIREMENT", [Arg])})
    end.

%%% verify-file

verify_file(File, Kind, Repo, PublicKey, MaybePackage) ->
    Decode = case {Kind, MaybePackage} of
                 {"names", []} -> fun(P) -> r3_hex_registry:decode_names(P, Repo) end;
                 {"versions", []} -> fun(P) -> r3_hex_registry:decode_versions(P, Repo) end;
                 {"package", [Package]} ->
                     fun(P) -> r3_hex_registry:decode_package(P, Repo, list_to_binary(Package)) end;
                 _ -> throw({usage, "verify-file wants names|versions, or package with a PACKAGE"})
             end,
    try zlib:gunzip(read_file(File)) of
        Signed -> verify_signed(File, Signed, PublicKey, Decode)
    catch
        error:Why -> {fail, io_lib:format("~s: not gzip: ~p", [File, Why])}
    end.

verify_signed(File, Signed, PublicKey, Decode) ->
    case r3_hex_registry:decode_and_verify_signed(Signed, PublicKey) of
        {ok, Payload} ->
            case Decode(Payload) of
                {ok, _} -> io:format("ok~n");
                {error, Reason} ->
                    {fail, io_lib:format("~s: signature ok, repository or name check failed: ~p",
                                         [File, Reason])}
            end;
        {error, Reason} ->
            {fail, io_lib:format("~s: signature check failed: ~p", [File, Reason])}
    end.

%%% Loading hex_core out of rebar3

%% rebar3 is an escript whose archive holds rebar/ebin/*.beam. hex_core's
%% modules there are r3_hex_*; r3_hex_tarball also needs r3_safe_erl_term
%% (metadata.config parser), so load both families.
load_hex_core() ->
    Rebar3 = case os:find_executable("rebar3") of
                 false -> fail("rebar3 is not on PATH; install it (apt-get install rebar3, or bash .ci/run)");
                 Path -> Path
             end,
    {ok, Sections} = escript:extract(Rebar3, []),
    {archive, Archive} = lists:keyfind(archive, 1, Sections),
    Wanted = fun(Entry) ->
                 Name = element(2, Entry),
                 lists:prefix("rebar/ebin/r3_hex_", Name)
                     orelse Name =:= "rebar/ebin/r3_safe_erl_term.beam"
             end,
    {ok, Beams} = zip:extract(Archive, [memory, {file_filter, Wanted}]),
    [{module, _} = code:load_binary(list_to_atom(filename:basename(File, ".beam")), File, Beam)
     || {File, Beam} <- Beams],
    %% r3_hex_http_httpc uses httpc's default profile.
    {ok, _} = application:ensure_all_started(inets),
    ok.

api_config(Url, Key) ->
    maps:merge(r3_hex_core:default_config(),
               #{api_url => to_bin(Url), api_key => to_bin(Key)}).

api_result({ok, {Status, _Headers, Body}}) ->
    io:format("~p~n~p~n", [Status, Body]);
api_result({error, Reason}) ->
    {fail, io_lib:format("API call failed before a response: ~p", [Reason])}.

repo_config(Url, Repo, PublicKey) ->
    maps:merge(r3_hex_core:default_config(),
               #{repo_url => list_to_binary(Url), repo_name => list_to_binary(Repo),
                 repo_public_key => PublicKey, repo_verify => true, repo_verify_origin => true}).

%%% SemVer ordering

%% Sort key with SemVer 2.0 precedence: a pre-release sorts before its
%% release; numeric identifiers compare as numbers and below alphanumeric
%% ones; fewer identifiers sort first (Erlang list order already does that).
%% Build metadata has no precedence, so it only breaks ties for a stable sort.
version_key(#{version := V}) ->
    {Main, Build} = case binary:split(V, <<"+">>) of
                        [M, B] -> {M, B};
                        [M] -> {M, <<>>}
                    end,
    {Core, Pre} = case binary:split(Main, <<"-">>) of
                      [C, P] -> {C, [pre_id(I) || I <- binary:split(P, <<".">>, [global])]};
                      [C] -> {C, release}
                  end,
    Nums = [binary_to_integer(N) || N <- binary:split(Core, <<".">>, [global])],
    %% The atom `release` sorts after every list, so a release beats its
    %% pre-releases.
    {Nums, Pre, Build}.

pre_id(Id) ->
    try {0, binary_to_integer(Id)}
    catch error:badarg -> {1, Id}
    end.

%%% Files, keys, output

read_spec(File) ->
    case file:consult(File) of
        {ok, Terms} -> Terms;
        {error, Reason} -> throw({usage, io_lib:format("cannot read spec ~s: ~s", [File, file:format_error(Reason)])})
    end.

read_file(File) ->
    case file:read_file(File) of
        {ok, Bin} -> Bin;
        {error, Reason} -> fail(io_lib:format("cannot read ~s: ~s", [File, file:format_error(Reason)]))
    end.

write_file(File, Bin) ->
    ok = filelib:ensure_dir(File),
    ok = file:write_file(File, Bin).

write_signed(File, Payload, Key) ->
    write_file(File, zlib:gzip(r3_hex_registry:sign_protobuf(Payload, Key))).

read_private_key(File) ->
    case public_key:pem_decode(read_file(File)) of
        [Entry | _] ->
            #'RSAPrivateKey'{} = Key = public_key:pem_entry_decode(Entry),
            Key;
        [] ->
            fail(io_lib:format("~s holds no PEM entry", [File]))
    end.

%% SPKI ("BEGIN PUBLIC KEY"), the form clients and hexmirror expect.
public_key_pem(#'RSAPrivateKey'{modulus = N, publicExponent = E}) ->
    Public = #'RSAPublicKey'{modulus = N, publicExponent = E},
    public_key:pem_encode([public_key:pem_entry_encode('SubjectPublicKeyInfo', Public)]).

print_release(Release) ->
    Outer = case Release of
                #{outer_checksum := C} -> hex(C);
                #{} -> "-"
            end,
    io:format("~s ~s~n", [maps:get(version, Release), Outer]).

print_checksums(#{inner_checksum := Inner, outer_checksum := Outer}) ->
    io:format("inner_checksum ~s~nouter_checksum ~s~n", [hex(Inner), hex(Outer)]).

hex(Bin) -> string:lowercase(binary:encode_hex(Bin)).

to_bin(B) when is_binary(B) -> B;
to_bin(L) when is_list(L) -> unicode:characters_to_binary(L);
to_bin(A) when is_atom(A) -> atom_to_binary(A).

to_list(B) when is_binary(B) -> unicode:characters_to_list(B);
to_list(L) when is_list(L) -> L.
