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
%%   org-key-add API_URL API_KEY ORG NAME [DOMAIN:RESOURCE ...]
%%   org-key-list API_URL API_KEY ORG
%%   org-key-get API_URL API_KEY ORG NAME
%%   org-key-delete API_URL API_KEY ORG NAME
%%   org-key-delete-all API_URL API_KEY ORG
%%       r3_hex_api_key's add/3, list/1, get/2, delete/2 and delete_all/1 with
%%       api_organization = ORG, so they go to API_URL/orgs/ORG/keys[/NAME].
%%       add's permissions are maps with binary keys, as rebar3_hex sends.
%%   key-delete API_URL API_KEY NAME
%%   key-delete-all API_URL API_KEY
%%       r3_hex_api_key's delete/2 and delete_all/1 for the user's keys
%%       (API_URL/keys[/NAME]), as rebar3_hex's `hex user key revoke` sends.
%%   org-list API_URL API_KEY
%%   org-get API_URL API_KEY ORG
%%   org-update API_URL API_KEY ORG BILLING_EMAIL
%%       rebar3 3.19's hex_core (0.7.1) has no r3_hex_api_organization; these
%%       make the requests later hex_core's hex_api_organization list/1 and
%%       get/1 make (GET API_URL/orgs, GET API_URL/orgs/ORG), with 0.7.1's own
%%       r3_hex_api:get/2 and build_organization_path/2. org-update POSTs
%%       #{<<"billing_email">> => ...} to API_URL/orgs/ORG with r3_hex_api:post/3
%%       (later hex_core's update/2 posts `seats`, a hex.pm billing field).
%%       Like the calls above these print the status, then the body, but as
%%       JSON (`null` unless the body was Erlang terms) so tests can read
%%       fields; exit 0 whatever the status.
%%   org-repo REPO_URL REPO_KEY ORG PUBKEY.pem PACKAGE
%%       Reads organization ORG's repository as rebar3 does: r3_hex_repo with
%%       repo_organization = ORG (URLs REPO_URL/repos/ORG/...; signature checked
%%       against PUBKEY.pem and every payload's repository must be ORG, which
%%       takes precedence over repo_name) and repo_key = REPO_KEY (sent as
%%       authorization). get_names, get_versions, get_package PACKAGE, then
%%       get_tarball of each release: its SHA-256 must be the record's outer
%%       checksum, and r3_hex_tarball:unpack its inner one. Prints 200 and a
%%       JSON summary, or the first other status and {"refused": STEP}; a
%%       failed signature, origin or checksum check exits 1.
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
command(["org-key-add", Url, Key, Org, Name | Perms]) ->
    Permissions = [parse_permission(P) || P <- Perms],
    api_json_result(r3_hex_api_key:add(org_config(Url, Key, Org), to_bin(Name), Permissions));
command(["org-key-list", Url, Key, Org]) ->
    api_json_result(r3_hex_api_key:list(org_config(Url, Key, Org)));
command(["org-key-get", Url, Key, Org, Name]) ->
    api_json_result(r3_hex_api_key:get(org_config(Url, Key, Org), to_bin(Name)));
command(["org-key-delete", Url, Key, Org, Name]) ->
    api_json_result(r3_hex_api_key:delete(org_config(Url, Key, Org), to_bin(Name)));
command(["org-key-delete-all", Url, Key, Org]) ->
    api_json_result(r3_hex_api_key:delete_all(org_config(Url, Key, Org)));
command(["key-delete", Url, Key, Name]) ->
    api_json_result(r3_hex_api_key:delete(api_config(Url, Key), to_bin(Name)));
command(["key-delete-all", Url, Key]) ->
    api_json_result(r3_hex_api_key:delete_all(api_config(Url, Key)));
command(["org-list", Url, Key]) ->
    api_json_result(r3_hex_api:get(api_config(Url, Key), ["orgs"]));
command(["org-get", Url, Key, Org]) ->
    Config = org_config(Url, Key, Org),
    api_json_result(r3_hex_api:get(Config, r3_hex_api:build_organization_path(Config, [])));
command(["org-update", Url, Key, Org, Email]) ->
    Config = org_config(Url, Key, Org),
    Body = #{<<"billing_email">> => to_bin(Email)},
    api_json_result(r3_hex_api:post(Config, r3_hex_api:build_organization_path(Config, []), Body));
command(["org-repo", Url, RepoKey, Org, KeyFile, Package]) ->
    org_repo(org_repo_config(Url, RepoKey, Org, read_file(KeyFile)), to_bin(Package));
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

%%% Organizations

parse_permission(Arg) ->
    case string:split(Arg, ":") of
        [Domain, Resource] when Domain =/= "", Resource =/= "" ->
            #{<<"domain">> => to_bin(Domain), <<"resource">> => to_bin(Resource)};
        _ -> throw({usage, io_lib:format("permission ~p is not DOMAIN:RESOURCE", [Arg])})
    end.

%% Every step must answer 200 and pass hex_core's checks; the first other
%% status is printed with the step it stopped at.
org_repo(Config, Package) ->
    Steps = [{names, fun() -> r3_hex_repo:get_names(Config) end},
             {versions, fun() -> r3_hex_repo:get_versions(Config) end},
             {package, fun() -> r3_hex_repo:get_package(Config, Package) end}],
    case run_steps(Steps, #{}) of
        {refused, Step, Status} ->
            print_json_result(Status, #{<<"refused">> => Step});
        {ok, #{names := Names, versions := Versions, package := Releases}} ->
            case fetch_tarballs(Config, Package, Releases, []) of
                {refused, Step, Status} ->
                    print_json_result(Status, #{<<"refused">> => Step});
                {ok, Tarballs} ->
                    print_json_result(200, #{
                        <<"names">> => [N || #{name := N} <- Names],
                        <<"versions">> => maps:from_list([{N, Vs} || #{name := N, versions := Vs} <- Versions]),
                        <<"package">> => [release_json(R) || R <- Releases],
                        <<"tarballs">> => Tarballs});
                {fail, _} = Fail -> Fail
            end;
        {fail, _} = Fail -> Fail
    end.

run_steps([], Acc) ->
    {ok, Acc};
run_steps([{Step, Call} | Rest], Acc) ->
    case Call() of
        {ok, {200, _Headers, Decoded}} -> run_steps(Rest, Acc#{Step => Decoded});
        {ok, {Status, _Headers, _Body}} -> {refused, Step, Status};
        {error, Reason} -> {fail, io_lib:format("~s refused by hex_core: ~p", [Step, Reason])}
    end.

%% What rebar3 does after a download: the tarball's SHA-256 against the
%% record's outer checksum, then unpack (which checks the inner one) and the
%% inner checksum against the record's.
fetch_tarballs(_Config, _Package, [], Acc) ->
    {ok, lists:reverse(Acc)};
fetch_tarballs(Config, Package, [#{version := V} = Release | Rest], Acc) ->
    case r3_hex_repo:get_tarball(Config, Package, V) of
        {ok, {200, _Headers, Tarball}} ->
            Outer = crypto:hash(sha256, Tarball),
            case {Release, r3_hex_tarball:unpack(Tarball, memory)} of
                {#{outer_checksum := Outer, inner_checksum := Inner},
                 {ok, #{inner_checksum := Inner, outer_checksum := Outer}}} ->
                    Entry = #{<<"version">> => V, <<"sha256">> => hex(Outer)},
                    fetch_tarballs(Config, Package, Rest, [Entry | Acc]);
                {_, Unpacked} ->
                    {fail, io_lib:format("tarball ~s-~s (sha256 ~s) does not match its record ~p: ~p",
                                         [Package, V, hex(Outer), release_json(Release), Unpacked])}
            end;
        {ok, {Status, _Headers, _Body}} ->
            {refused, <<"tarball">>, Status};
        {error, Reason} ->
            {fail, io_lib:format("tarball ~s-~s refused by hex_core: ~p", [Package, V, Reason])}
    end.

release_json(Release) ->
    Checksum = fun(K) ->
                   case Release of
                       #{K := C} -> hex(C);
                       #{} -> nil
                   end
               end,
    #{<<"version">> => maps:get(version, Release),
      <<"inner_checksum">> => Checksum(inner_checksum),
      <<"outer_checksum">> => Checksum(outer_checksum)}.

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

%% API calls on behalf of organization ORG (r3_hex_api:build_organization_path).
org_config(Url, Key, Org) ->
    (api_config(Url, Key))#{api_organization => to_bin(Org)}.

%% repo_name as rebar3 sets it for a `hexpm:ORG` repository; hex_core checks
%% origin against repo_organization, which wins over repo_name.
org_repo_config(Url, RepoKey, Org, PublicKey) ->
    (repo_config(Url, Org, PublicKey))#{repo_organization => to_bin(Org),
                                        repo_key => to_bin(RepoKey)}.

api_json_result({ok, {Status, _Headers, Body}}) ->
    print_json_result(Status, Body);
api_json_result({error, Reason}) ->
    api_result({error, Reason}).

print_json_result(Status, Body) ->
    io:format("~p~n~s~n", [Status, json(Body)]).

%% JSON of the terms a Hex API body holds: maps (binary or atom keys), lists,
%% binaries (UTF-8), numbers, true/false and nil/undefined as null.
json(nil) -> "null";
json(undefined) -> "null";
json(true) -> "true";
json(false) -> "false";
json(A) when is_atom(A) -> json(atom_to_binary(A));
json(N) when is_integer(N) -> integer_to_list(N);
json(F) when is_float(F) -> float_to_list(F, [short]);
json(B) when is_binary(B) -> [$", [json_char(C) || C <- unicode:characters_to_list(B)], $"];
json(L) when is_list(L) -> [$[, lists:join($,, [json(E) || E <- L]), $]];
json(M) when is_map(M) ->
    [${, lists:join($,, [[json(to_bin(K)), $:, json(V)] || {K, V} <- lists:sort(maps:to_list(M))]), $}].

json_char($") -> "\\\"";
json_char($\\) -> "\\\\";
json_char(C) when C < 16#20 -> io_lib:format("\\u~4.16.0b", [C]);
json_char(C) -> unicode:characters_to_binary([C]).

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
